"""`duorank bench scale`: the figures the 100M-item plan (docs/scale.md) is built from.

1. **Encoding**: a synthetic catalog (deterministic titles and genres, 10k items; 1k with
   ``--quick``) encoded by the bundled MiniLM without a cache: in this process (the local
   build's path), and on Ray Data with 1 and 2 encoder actors (the ``--engine ray`` path,
   actor start-up included). On 2 cores the figure is the efficiency of 2 actors against 1
   (the wall-clock ratio over 2), not a speed-up over the local path.
2. **Redis memory per cached vector**, float32 and float16: ``MEMORY USAGE`` of the keys the
   cache writes (key, value and Redis's own overhead), averaged over a sample.
3. **FAISS index memory**: the serialized size of flat, HNSW and IVF-PQ indexes over 100k
   clustered 384-d vectors (``bench retrieval``'s generator and settings), per vector. Build
   time and Recall@100 at 1M come from ``bench retrieval`` (benchmarks/results/retrieval.json),
   which measures them with the same settings.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target
from catalog.model import Item
from catalog.text import ItemTextTemplate

ADJECTIVES = ("Silent", "Last", "Red", "Hidden", "Broken", "Golden", "Lost", "Wild", "Dark")
NOUNS = ("River", "City", "Promise", "Garden", "Empire", "Letter", "Storm", "Road", "Mirror")
PLACES = ("North", "Sea", "Valley", "Moon", "Desert", "Island", "Border", "Harbor", "Forest")
GENRES = ("Drama", "Comedy", "Thriller", "Romance", "Sci-Fi", "Horror", "Animation", "War")


def synthetic_items(n: int) -> dict[str, Item]:
    """``n`` deterministic catalog items (titles, years, two genres each)."""
    items = {}
    for i in range(n):
        a, b, c = ADJECTIVES[i % 9], NOUNS[(i // 9) % 9], PLACES[(i // 81) % 9]
        title = f"The {a} {b} of the {c} {i // 729 + 1} ({1950 + i % 70})"
        genres = (GENRES[i % 8], GENRES[(i * 7 + 3) % 8])
        items[f"s{i}"] = Item(f"s{i}", title, genres=genres)
    return items


def _encode_local(items: dict[str, Item], encoder: Any) -> float:
    template = ItemTextTemplate()
    texts = [template.render(it) for it in items.values()]
    started = time.perf_counter()
    for start in range(0, len(texts), 512):
        encoder.encode_uncached(texts[start : start + 512])
    return time.perf_counter() - started


def _encode_ray(items: dict[str, Item], encoder: Any, workers: int) -> float:
    from indexer.ray_engine import RayEngine

    started = time.perf_counter()
    engine = RayEngine(workers=workers, num_gpus=0.0)
    out = engine.encode(list(items.values()), ItemTextTemplate(), encoder, 256, False)
    assert len(out.ids) == len(items)
    return time.perf_counter() - started


def _redis_bytes(ctx: BenchContext, dims: int, n: int) -> dict[str, float]:
    """Mean ``MEMORY USAGE`` of a cached vector, per value type."""
    from retrieval.cache import EmbeddingCache
    from retrieval.redis_client import open_redis

    client, server = open_redis(ctx.redis_url, ctx.home / "redis")
    out: dict[str, float] = {}
    try:
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(n, dims)).astype(np.float32)
        for dtype in ("float32", "float16"):
            ns = f"duorank-bench-scale:{uuid.uuid4().hex[:8]}"
            cache = EmbeddingCache(client, namespace=ns, dtype=dtype)
            texts = [f"synthetic item {i}" for i in range(n)]
            cache.put_many("fp", texts, vectors)
            keys = [cache.key("fp", t) for t in texts]
            sizes = [int(client.memory_usage(k) or 0) for k in keys]
            out[dtype] = float(np.mean(sizes))
            client.delete(*keys)
    finally:
        client.close()
        if server is not None:
            server.close()
    return out


def _faiss_bytes(n: int) -> list[dict[str, Any]]:
    import faiss

    from benchmarks.bench_retrieval import BACKENDS, DIM, clustered
    from retrieval.index import make_index

    vectors = clustered(n)
    rows = []
    for name, params in BACKENDS.items():
        started = time.perf_counter()
        index = make_index(name, DIM, **params).build([str(i) for i in range(n)], vectors)
        build = time.perf_counter() - started
        size = int(faiss.serialize_index(index.index).nbytes)
        rows.append(
            {"index": name, "n": n, "bytes": size, "bytes_per_vector": size / n, "build_s": build}
        )
    return rows


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    from retrieval.encoder import Encoder

    ctx = ctx or BenchContext()
    n = 1_000 if quick else 10_000
    items = synthetic_items(n)
    encoder = Encoder(device="cpu")
    _encode_local(dict(list(items.items())[:64]), encoder)  # warm the model
    local_s = _encode_local(items, encoder)
    rows: list[dict[str, Any]] = [
        {"part": "encode", "engine": "local", "workers": 1, "items": n, "seconds": local_s}
    ]
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for workers in (1, 2):
            seconds = _encode_ray(items, encoder, workers)
            rows.append(
                {
                    "part": "encode",
                    "engine": "ray",
                    "workers": workers,
                    "items": n,
                    "seconds": seconds,
                }
            )
    finally:
        ray.shutdown()
    for row in rows:
        row["items_per_s"] = row["items"] / row["seconds"]
    one, two = rows[1]["seconds"], rows[2]["seconds"]
    efficiency = one / two / 2
    redis_bytes = _redis_bytes(ctx, encoder.dim, 200 if quick else 2_000)
    faiss_rows = _faiss_bytes(10_000 if quick else 100_000)
    return BenchReport(
        name="scale",
        params={
            "quick": quick,
            "items": n,
            "model": "all-MiniLM-L6-v2 (bundled)",
            "dims": encoder.dim,
            "ray_cpus": 2,
            "faiss_n": faiss_rows[0]["n"],
        },
        results={
            "encode": rows,
            "ray_2_vs_1_efficiency": efficiency,
            "ray_vs_local": local_s / one,
            "redis_bytes_per_vector": redis_bytes,
            "faiss": faiss_rows,
        },
        targets=[
            Target("Ray: 2 actors vs 1, efficiency on 2 cores", round(efficiency, 3), 0.5),
            Target(
                "Redis: float16 bytes per vector / float32's",
                round(redis_bytes["float16"] / redis_bytes["float32"], 3),
                0.75,
                "<=",
            ),
        ],
        table=[
            *rows,
            *({"part": "redis", "dtype": k, "bytes_per_vector": v} for k, v in redis_bytes.items()),
            *({"part": "faiss", **r} for r in faiss_rows),
        ],
    )
