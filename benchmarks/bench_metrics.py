"""`duorank bench metrics`: the vectorised metric core against a straightforward Python loop.

Full-ranking evaluation computes metrics for every user at several cut-offs many times (each
method, each bootstrap sample), so the metric core must not be the slow part.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target
from metrics import ndcg_at_k, recall_at_k


def _loop_ndcg(ranked: np.ndarray, relevant: list[np.ndarray], k: int) -> float:
    values = []
    for row, rel in zip(ranked, relevant, strict=True):
        rel_set = set(rel.tolist())
        dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(row[:k]) if item in rel_set)
        idcg = sum(1.0 / np.log2(i + 2) for i in range(min(len(rel_set), k)))
        values.append(dcg / idcg)
    return float(np.mean(values))


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Times NDCG@100 and Recall@100 over many users, vectorised vs loop."""
    n_users = 2_000 if quick else 50_000
    n_items, k, repeats = 20_000, 100, 3 if quick else 5
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.choice(n_items, size=k, replace=False) for _ in range(n_users)])
    relevant = [rng.choice(n_items, size=rng.integers(1, 5), replace=False) for _ in range(n_users)]
    fast = _median_time(lambda: ndcg_at_k(ranked, relevant, k), repeats)
    slow = _median_time(lambda: _loop_ndcg(ranked, relevant, k), repeats)
    fast_recall = _median_time(lambda: recall_at_k(ranked, relevant, k), repeats)
    agree = abs(float(ndcg_at_k(ranked, relevant, k)) - _loop_ndcg(ranked, relevant, k))
    speedup = slow / fast
    return BenchReport(
        name="metrics",
        params={"users": n_users, "items": n_items, "k": k, "repeats": repeats, "quick": quick},
        results={
            "ndcg_vectorised_s": fast,
            "ndcg_loop_s": slow,
            "recall_vectorised_s": fast_recall,
            "speedup": speedup,
            "max_abs_difference": agree,
        },
        targets=[
            Target("NDCG@100 vectorised speed-up over a Python loop", round(speedup, 2), 2.0),
            Target("vectorised and loop NDCG agree (abs difference)", agree, 1e-9, "<="),
        ],
        table=[
            {"method": "vectorised NDCG@100", "median_s": fast, "users/s": n_users / fast},
            {"method": "python loop NDCG@100", "median_s": slow, "users/s": n_users / slow},
            {
                "method": "vectorised Recall@100",
                "median_s": fast_recall,
                "users/s": n_users / fast_recall,
            },
        ],
    )
