"""Shared vectorised core of the ranking metrics.

A run is an integer matrix ``ranked`` of shape (users, L): row u holds the item indices
recommended to user u, best first, padded with -1. Ground truth is ``relevant``: one sequence of
item indices per user. The core turns both into a boolean hit matrix in one ``np.isin`` call on
(user, item) keys, so no metric loops over users in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

IntMatrix = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Relevant = Sequence[Sequence[int] | npt.NDArray[np.int64]] | npt.NDArray[np.int64]
"""One sequence of relevant item indices per user, or a (users, m) matrix padded with -1."""


def as_ranked(ranked: npt.ArrayLike) -> IntMatrix:
    """Validates a run matrix: 2-D integers, -1 only as padding."""
    arr = np.asarray(ranked)
    if arr.ndim != 2:
        raise ValueError(f"ranked must be a 2-D (users, list length) array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"ranked must hold integer item indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_k(k: int) -> None:
    """Raises on a cut-off below 1."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def hits_and_counts(
    ranked: npt.ArrayLike, relevant: Relevant, k: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Returns ``hits[u, i]`` (item at rank i+1 is relevant, i < k) and ``n_relevant[u]``.

    Duplicate items within a user's ranked list count once (at their first position), as in
    trec_eval. Duplicates in ``relevant`` count once; negative entries in ``relevant`` are
    padding.
    """
    check_k(k)
    run = as_ranked(ranked)
    n_users = run.shape[0]
    if len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} users but ranked has {n_users} rows")
    top = run[:, :k]
    if isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        # Padded matrix form (-1 = no item): no Python loop at all.
        rel_users = np.repeat(np.arange(n_users, dtype=np.int64), relevant.shape[1])
        rel_items = relevant.astype(np.int64).reshape(-1)
    else:
        lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=n_users)
        rel_users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
        rel_items = (
            np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in relevant])
            if n_users
            else np.zeros(0, dtype=np.int64)
        )
    valid = rel_items >= 0
    rel_users, rel_items = rel_users[valid], rel_items[valid]
    width = int(max(top.max(initial=0), rel_items.max(initial=0))) + 2
    rel_keys = np.unique(rel_users * width + rel_items)  # sorted and deduplicated
    n_rel = np.bincount(rel_keys // width, minlength=n_users).astype(np.int64)
    if top.size == 0:
        return np.zeros(top.shape, dtype=bool), n_rel
    keys = np.arange(n_users, dtype=np.int64)[:, None] * width + top
    # rel_keys is sorted (users ascending, items sorted within a user): binary search, not isin.
    hits = np.zeros(top.shape, dtype=bool)
    if rel_keys.size:
        pos = np.minimum(np.searchsorted(rel_keys, keys), rel_keys.size - 1)
        hits = (rel_keys[pos] == keys) & (top >= 0)
    # An item repeated in one list only counts at its first position; hits are sparse, so only
    # hit keys are deduplicated (row-major order puts the first position first).
    rows, cols = np.nonzero(hits)
    if rows.size:
        _, first = np.unique(keys[rows, cols], return_index=True)
        if first.size < rows.size:
            keep = np.zeros(rows.size, dtype=bool)
            keep[first] = True
            hits[rows[~keep], cols[~keep]] = False
    return hits, n_rel


def reduce(
    per_user: FloatArray, n_rel: npt.NDArray[np.int64], per_user_out: bool
) -> FloatArray | float:
    """Users without relevant items get NaN and are left out of the mean."""
    values = np.where(n_rel > 0, per_user, np.nan)
    if per_user_out:
        return values
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


ROW_AT_A_TIME = 50_000
"""Rows at least this long (a catalog's scores) are cut one at a time by :func:`_top_of_row`:
two passes over the row instead of about eight (tens of ms a call at a million items)."""


def _top_of_row(row: npt.NDArray[np.float64], kk: int) -> npt.NDArray[np.int64]:
    """:func:`top_k` of one row, ``kk`` below its length: the same columns in the same order
    (ties to the lower index), from the entries at or above the ``kk``-th score alone."""
    kth = -np.partition(-row, kk - 1)[kk - 1]
    cand = np.flatnonzero(row >= kth)  # ascending, as np.nonzero gives them
    vals = row[cand]
    above = vals > kth
    room = kk - int(above.sum())
    chosen = above | (np.cumsum(~above) <= room)  # the lowest-index ties fill the room
    cols, vals = cand[chosen], vals[chosen]
    order = np.argsort(-vals, kind="stable")
    out: npt.NDArray[np.int64] = np.where(vals[order] == -np.inf, -1, cols[order])
    return out


def top_k(scores: npt.ArrayLike, k: int) -> IntMatrix:
    """Indices of the ``k`` highest scores per row, best first; ties go to the lower index.

    Deterministic (no dependence on partition order). Entries scored -inf (excluded items) come
    back as -1 when a row has fewer than ``k`` finite scores.
    """
    check_k(k)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {s.shape}")
    n_rows, n_cols = s.shape
    kk = min(k, n_cols)
    out = np.full((n_rows, k), -1, dtype=np.int64)
    if kk == 0 or n_rows == 0:
        return out
    if kk < n_cols and n_cols >= ROW_AT_A_TIME:
        for r in range(n_rows):
            out[r, :kk] = _top_of_row(s[r], kk)
        return out
    if kk < n_cols:
        kth = -np.partition(-s, kk - 1, axis=1)[:, kk - 1 : kk]
        above = s > kth
        tied = s == kth
        room = kk - above.sum(axis=1, keepdims=True)
        chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
        cols = np.nonzero(chosen)[1].reshape(n_rows, kk)
    else:
        cols = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    vals = np.take_along_axis(s, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    best = np.take_along_axis(cols, order, axis=1)
    best_vals = np.take_along_axis(vals, order, axis=1)
    out[:, :kk] = np.where(best_vals == -np.inf, -1, best)
    return out
