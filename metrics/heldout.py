"""Metrics of one held-out item per user, from the rank it got.

Training loops validate on next-item targets: one relevant item per user. Then Recall@K is the
hit rate and NDCG@K is the discount of the target's rank, and both follow from the ranks alone,
without building ranked lists. These functions equal :func:`metrics.recall_at_k` and
:func:`metrics.ndcg_at_k` on the same runs (tests hold them together); they differ only in how a
tie is broken: :func:`target_ranks` counts the items scored strictly above the target, so a tie
goes to the target.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

from metrics._core import check_k

IntArray = npt.NDArray[np.int64]


def target_ranks(scores: npt.ArrayLike, targets: npt.ArrayLike) -> IntArray:
    """0-based rank of each row's target column: how many items score strictly above it.

    Args:
        scores: (users, items) scores; excluded items set to -inf.
        targets: (users,) the target's column in each row.
    """
    s = np.asarray(scores)
    t = np.asarray(targets, dtype=np.int64)
    if s.ndim != 2 or t.shape != (s.shape[0],):
        raise ValueError(
            f"scores must be (users, items) and targets (users,), got {s.shape}, {t.shape}"
        )
    ranks: IntArray = (s > s[np.arange(len(t)), t][:, None]).sum(axis=1).astype(np.int64)
    return ranks


ABSENT = np.iinfo(np.int64).max // 4
"""The rank of a target missing from its list: past every cut-off."""


def list_ranks(ranked: Sequence[Sequence[Hashable]], targets: Sequence[Hashable]) -> IntArray:
    """0-based position of each target in its ranked list (ids of any hashable kind); a target
    missing from its list gets :data:`ABSENT`."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists but {len(targets)} targets")
    return np.array(
        [list(r).index(t) if t in r else ABSENT for r, t in zip(ranked, targets, strict=True)],
        dtype=np.int64,
    )


def ndcg_at_k_from_ranks(ranks: npt.ArrayLike, k: int) -> float:
    r"""Mean NDCG@K of single targets at 0-based ``ranks``: :math:`1/\log_2(r + 2)` when
    :math:`r < K`, else 0 (Järvelin & Kekäläinen, TOIS 2002; the ideal DCG of one relevant
    item is 1). NaN for no users."""
    check_k(k)
    r = np.asarray(ranks)
    if r.size == 0:
        return float("nan")
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))


def recall_at_k_from_ranks(ranks: npt.ArrayLike, k: int) -> float:
    """Mean Recall@K (= hit rate) of single targets at 0-based ``ranks``. NaN for no users."""
    check_k(k)
    r = np.asarray(ranks)
    if r.size == 0:
        return float("nan")
    return float(np.mean(r < k))


def heldout_ndcg(
    ranked: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], k: int
) -> float:
    """Mean NDCG@K of each list's held-out target (0 where the list misses it): the one place
    the reranker's validation and the benchmarks read NDCG of ranked id lists."""
    return ndcg_at_k_from_ranks(list_ranks(ranked, targets), k)
