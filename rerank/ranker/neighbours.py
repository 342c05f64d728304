"""Item-to-item tables bounded per item, so that their size does not grow with the users.

An exact co-occurrence table grows with the users until it holds nearly every pair of items;
the ranking stage keeps each item's ``k`` strongest neighbours instead (the co-visitation
weights by weight, the co-occurrence counts by cosine). A serving process then holds at most
``k`` pairs an item, whatever the log's size (:doc:`docs/scale.md`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

BLOCK = 2048
"""Items whose co-occurrence rows are computed at once (a block's product is sparse)."""


def top_k_rows(
    values: sp.csr_matrix, k: int, rank_by: sp.csr_matrix | None = None
) -> sp.csr_matrix:
    """``values`` with only each row's ``k`` largest entries of ``rank_by`` (default
    ``values`` itself; the same sparsity), ties by the lower column.

    Raises:
        ValueError: ``k`` is below 1 or ``rank_by`` has another pattern.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    values = values.tocsr()
    values.sort_indices()
    if rank_by is None:
        rank_by = values
    else:
        rank_by = rank_by.tocsr()
        rank_by.sort_indices()
        if not (
            np.array_equal(rank_by.indptr, values.indptr)
            and np.array_equal(rank_by.indices, values.indices)
        ):
            raise ValueError("rank_by must have the same sparsity pattern as values")
    sizes = np.diff(values.indptr)
    if not len(sizes) or sizes.max(initial=0) <= k:
        return values
    keep = np.ones(values.nnz, dtype=bool)
    for row in np.flatnonzero(sizes > k):
        lo, hi = values.indptr[row], values.indptr[row + 1]
        # stable sort of -score: among equal scores the lower column (earlier entry) wins
        order = np.argsort(-rank_by.data[lo:hi], kind="stable")
        keep[lo + order[k:]] = False
    row_of = np.repeat(np.arange(values.shape[0]), sizes)
    out = sp.csr_matrix(
        (values.data[keep], (row_of[keep], values.indices[keep])), shape=values.shape
    )
    out.sort_indices()
    return out


def cooccurrence_top_k(
    users_of: sp.csr_matrix, k: int, block: int = BLOCK
) -> tuple[sp.csr_matrix, npt.NDArray[np.float32]]:
    """Each item's co-occurrence counts with its ``k`` most similar items (cosine of their
    user sets; an item is not its own neighbour), and every item's norm (the square root of
    its number of users), from an (items, users) binary matrix, ``block`` items at a time."""
    users_of = users_of.tocsr().astype(np.float32)
    norm = np.sqrt(np.asarray(users_of.multiply(users_of).sum(axis=1))).ravel().astype(np.float32)
    by_user = users_of.T.tocsr()
    parts = []
    n = users_of.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        counts = (users_of[start:stop] @ by_user).tocsr()
        counts = counts.tocoo()
        off = counts.row + start != counts.col
        counts = sp.csr_matrix(
            (counts.data[off], (counts.row[off], counts.col[off])), shape=(stop - start, n)
        )
        counts.sort_indices()
        row_of = np.repeat(np.arange(stop - start), np.diff(counts.indptr))
        cosine = counts.copy()
        cosine.data = counts.data / np.maximum(
            norm[row_of + start] * norm[counts.indices], np.float32(1e-12)
        )
        parts.append(top_k_rows(counts, k, cosine))
    table = sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, 0), dtype=np.float32)
    return table.astype(np.float32), norm
