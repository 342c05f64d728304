"""`duorank bench scale`: the figures the 100M-item plan (docs/scale.md) is built from.

1. **Encoding**: synthetic catalogs (deterministic titles and genres) of 10k and 100k items
   (1k with ``--quick``) encoded by the bundled MiniLM without a cache: in this process (the
   local build's path), and on Ray Data with 1 and 2 encoder actors (the ``--engine ray``
   path, actor start-up included). On 2 cores the figure is the efficiency of 2 actors against
   1 (the wall-clock ratio over 2), not a speed-up over the local path.
2. **Redis memory per cached vector**, float32 and float16: ``MEMORY USAGE`` of the keys the
   cache writes (key, value and Redis's own overhead), averaged over a sample.
3. **FAISS at 1M** (10k with ``--quick``) clustered 384-d vectors (``bench retrieval``'s
   generator and settings): build time, serialized bytes per vector and Recall@100 against
   exact search for flat, HNSW and IVF-PQ, plus IVF-PQ built the way a spilled build does it
   (trained on its sample, filled shard by shard from a memory-mapped file) with a check that
   its bytes equal the in-memory build's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target
from catalog.model import Item
from catalog.progress import Progress
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
    with Progress("encoding in process", len(texts), "items") as bar:  # a long row: say so
        for start in range(0, len(texts), 512):
            encoder.encode_uncached(texts[start : start + 512])
            bar.update(min(512, len(texts) - start))
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


def _faiss_at(n: int, folder: Any) -> list[dict[str, Any]]:
    """Build time, bytes per vector and Recall@100 of each backend over ``n`` clustered
    vectors; IVF-PQ once more from a memmap, shard by shard."""
    import faiss

    from benchmarks.bench_retrieval import BACKENDS, DIM, _queries, bench_index, clustered
    from retrieval.index import make_index

    vectors = clustered(n)
    queries = _queries(vectors, 500, 7)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    _, truth = exact.search(queries, 100)
    del exact
    rows = []
    ivfpq: list[Any] = []  # the in-memory IVF-PQ, to compare bytes with the spilled build's
    for name, base in BACKENDS.items():
        params = dict(base)
        if name == "ivfpq":
            params["nlist"] = int(min(4096, max(16, 4 * np.sqrt(n))))
        rows.append(
            bench_index(
                f"clustered {n:,}",
                vectors,
                queries,
                name,
                params,
                truth,
                built=ivfpq if name == "ivfpq" else None,
            )
        )
    ivfpq_bytes = bytes(faiss.serialize_index(ivfpq.pop().index))
    params = {**BACKENDS["ivfpq"], "nlist": rows[-1]["params"]["nlist"]}
    spilled = np.lib.format.open_memmap(
        folder / "vectors.npy", mode="w+", dtype=np.float32, shape=vectors.shape
    )
    spilled[:] = vectors
    spilled.flush()
    del vectors, spilled
    mapped = np.load(folder / "vectors.npy", mmap_mode="r")
    started = time.perf_counter()
    index = make_index("ivfpq", DIM, **params).build([str(i) for i in range(n)], mapped)
    build_s = time.perf_counter() - started
    blob = bytes(faiss.serialize_index(index.index))
    _, found = index.index.search(queries, 100)
    recall = float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(found, truth, strict=True)]))
    rows.append(
        {
            **{k: rows[-1][k] for k in ("data", "n", "params")},
            "recall@100": recall,
            "index": "ivfpq (spilled, shard by shard)",
            "build_s": build_s,
            "bytes_per_vector": len(blob) / n,
            "same_bytes_as_in_memory": blob == ivfpq_bytes,
        }
    )
    return rows


def _encode_rows(sizes: tuple[int, ...], encoder: Any) -> list[dict[str, Any]]:
    """Encoding throughput at each size: in process, then on a local Ray with 1 and 2 actors
    (Ray starts after the in-process runs, so they share the cores with nothing)."""
    import ray

    _encode_local(synthetic_items(64), encoder)  # warm the model
    rows: list[dict[str, Any]] = [
        {
            "part": "encode",
            "engine": "local",
            "workers": 1,
            "items": n,
            "seconds": _encode_local(synthetic_items(n), encoder),
        }
        for n in sizes
    ]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for n in sizes:
            items = synthetic_items(n)
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
    return rows


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    import tempfile
    from pathlib import Path

    from retrieval.encoder import Encoder

    ctx = ctx or BenchContext()
    sizes = (1_000,) if quick else (10_000, 100_000)
    encoder = Encoder(device="cpu")
    rows = _encode_rows(sizes, encoder)

    def seconds(engine: str, workers: int, n: int) -> float:
        return float(
            next(
                r["seconds"]
                for r in rows
                if (r["engine"], r["workers"], r["items"]) == (engine, workers, n)
            )
        )

    efficiency = {n: seconds("ray", 1, n) / seconds("ray", 2, n) / 2 for n in sizes}
    largest = max(sizes)
    redis_bytes = _redis_bytes(ctx, encoder.dim, 200 if quick else 2_000)
    faiss_n = 10_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="duorank-bench-scale-") as tmp:
        faiss_rows = _faiss_at(faiss_n, Path(tmp))
    by_kind = {r["index"]: r for r in faiss_rows}
    spilled = by_kind["ivfpq (spilled, shard by shard)"]
    return BenchReport(
        name="scale",
        params={
            "quick": quick,
            "encode_sizes": list(sizes),
            "model": "all-MiniLM-L6-v2 (bundled)",
            "dims": encoder.dim,
            "ray_cpus": 2,
            "faiss_n": faiss_n,
        },
        results={
            "encode": rows,
            "ray_2_vs_1_efficiency": {str(n): e for n, e in efficiency.items()},
            "ray_vs_local": {str(n): seconds("local", 1, n) / seconds("ray", 1, n) for n in sizes},
            "local_items_per_s_by_size": {str(n): n / seconds("local", 1, n) for n in sizes},
            "redis_bytes_per_vector": redis_bytes,
            "faiss": faiss_rows,
        },
        targets=[
            Target(
                f"Ray: 2 actors vs 1, efficiency on 2 cores at {largest:,} items",
                round(efficiency[largest], 3),
                0.5,
            ),
            Target(
                "Redis: float16 bytes per vector / float32's",
                round(redis_bytes["float16"] / redis_bytes["float32"], 3),
                0.75,
                "<=",
            ),
            Target(
                f"IVF-PQ filled shard by shard from a memmap = in-memory build ({faiss_n:,})",
                int(bool(spilled["same_bytes_as_in_memory"])),
                1,
            ),
        ],
        table=[
            *rows,
            *({"part": "redis", "dtype": k, "bytes_per_vector": v} for k, v in redis_bytes.items()),
            *(
                {"part": "faiss", **{k: v for k, v in r.items() if k != "params"}}
                for r in faiss_rows
            ),
        ],
    )
