"""How far two orders of the same candidates agree: Spearman over the union of the two top
10s and the top-10 overlap (the depth curve's and the fast path's measure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def order_agreement(
    a: np.ndarray, b: np.ndarray, ids_a: Sequence[int], ids_b: Sequence[int]
) -> tuple[float, float]:
    """Spearman correlation of two rankings over the union of their top 10s (items outside a
    top 10 rank 11th) and the overlap of the two top 10s."""
    top_a = [ids_a[i] for i in np.argsort(-a, kind="stable")[:10]]
    top_b = [ids_b[i] for i in np.argsort(-b, kind="stable")[:10]]
    union = list(dict.fromkeys(top_a + top_b))
    rank_a = np.array([top_a.index(i) + 1 if i in top_a else 11 for i in union], np.float64)
    rank_b = np.array([top_b.index(i) + 1 if i in top_b else 11 for i in union], np.float64)
    if np.array_equal(rank_a, rank_b):
        rho = 1.0
    elif rank_a.std() == 0 or rank_b.std() == 0:
        rho = 0.0
    else:
        rho = float(np.corrcoef(rank_a, rank_b)[0, 1])  # ranks already: Pearson = Spearman
    return rho, len(set(top_a) & set(top_b)) / 10


def compare_orders(before: dict[str, Any], fast: dict[str, Any]) -> dict[str, Any]:
    """Two scorings of the same lists (``items``, ``scores`` and ``ndcg`` per list, as
    :func:`quality_child` prints them): mean NDCG@10 of each and their ratio, mean Spearman
    and top-10 overlap of the two orders, and the largest score difference."""
    if fast["items"] != before["items"]:
        raise ValueError("the two sides scored different candidate lists")
    agreement = [
        order_agreement(np.asarray(a), np.asarray(b), items, items)
        for a, b, items in zip(fast["scores"], before["scores"], fast["items"], strict=True)
    ]
    ndcg_before, ndcg_fast = float(np.mean(before["ndcg"])), float(np.mean(fast["ndcg"]))
    return {
        "lists": len(fast["ndcg"]),
        "ndcg@10_unoptimised": ndcg_before,
        "ndcg@10_fast_path": ndcg_fast,
        "ndcg_ratio": ndcg_fast / ndcg_before if ndcg_before else float("nan"),
        "spearman_top10": float(np.mean([rho for rho, _ in agreement])),
        "top10_overlap": float(np.mean([overlap for _, overlap in agreement])),
        "max_abs_score_difference": max(
            (
                float(np.max(np.abs(np.subtract(a, b)), initial=0.0))
                for a, b in zip(fast["scores"], before["scores"], strict=True)
            ),
            default=0.0,
        ),
    }
