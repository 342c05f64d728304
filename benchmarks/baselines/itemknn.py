"""Item-based kNN: item-item similarity over co-interactions, each user's items summed.

The similarity is the asymmetric cosine of Aiolli (RecSys 2013),
``sim(i, j) = <x_i, x_j> / (|x_i|^(2 alpha) |x_j|^(2 (1 - alpha)) + shrink)``, which is the
plain cosine at ``alpha = 0.5``; ``shrink`` damps pairs seen together a few times (Sarwar et al.,
WWW 2001). The columns ``x`` are binary, or weighted per user by IDF or BM25 so that users with
long histories count less (``implicit``'s weighting). Each history item keeps its ``neighbours``
most similar items. ``half_life`` > 0 weights history items by recency:
``0.5 ** (events since / half_life)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from benchmarks.baselines.base import Floats, Rows, Scorer, TrainData, Validation
from retrieval.sources import recency_weights

WEIGHTINGS = ("binary", "idf", "bm25")


def weight_users(
    matrix: sp.csr_matrix, weighting: str, k1: float = 1.2, b: float = 0.75
) -> sp.csr_matrix:
    """``matrix`` (users x items, binary) weighted per user: a user with many items counts less.

    ``idf``: ``log(items / (1 + user's items))``; ``bm25`` adds saturation and item-length
    normalisation (``implicit.nearest_neighbours.bm25_weight`` on the items x users matrix).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    x = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    if weighting == "binary":
        return x.astype(np.float32)
    n_items = x.shape[1]
    per_user = np.diff(x.indptr).astype(np.float64)
    idf = np.log(n_items) - np.log1p(per_user)
    coo = x.tocoo()
    if weighting == "bm25":
        per_item = np.bincount(coo.col, minlength=n_items).astype(np.float64)
        norm = (1.0 - b) + b * per_item / max(per_item.mean(), 1e-12)
        coo.data = coo.data * (k1 + 1.0) / (k1 * norm[coo.col] + coo.data)
    coo.data = coo.data * idf[coo.row]
    return coo.tocsr().astype(np.float32)


class ItemKNNScorer(Scorer):
    """Item-kNN with tunable similarity, neighbours, shrinkage and recency."""

    name = "itemknn"
    _gram: ClassVar[tuple[Any, ...] | None] = None  # (matrix, weighting, co, squared norms)

    def __init__(
        self,
        neighbours: int = 100,
        shrink: float = 10.0,
        alpha: float = 0.5,
        weighting: str = "binary",
        half_life: float = 0.0,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if neighbours < 1 or shrink < 0 or half_life < 0:
            raise ValueError(
                f"need neighbours >= 1, shrink >= 0, half_life >= 0; got {neighbours}, "
                f"{shrink}, {half_life}"
            )
        self.params = {
            "neighbours": neighbours,
            "shrink": shrink,
            "alpha": alpha,
            "weighting": weighting,
            "half_life": half_life,
        }
        self.data: TrainData | None = None
        self.sim: sp.csr_matrix | None = None

    @classmethod
    def release_cache(cls) -> None:
        """Drops the kept co-interaction matrix (items^2 floats) once a grid is done."""
        cls._gram = None

    def _cooccurrence(
        self, data: TrainData
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """Dense items x items co-interaction and each column's squared norm; the last one is
        kept, so a grid over the other settings computes it once per weighting."""
        weighting = self.params["weighting"]
        cached = ItemKNNScorer._gram
        if cached is not None and cached[0] is data.matrix and cached[1] == weighting:
            return cached[2], cached[3]
        ItemKNNScorer._gram = None  # free the previous one before building the next
        x = weight_users(data.matrix, weighting)
        co = np.asarray((x.T @ x).toarray(), dtype=np.float32)
        sq = np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel()
        ItemKNNScorer._gram = (data.matrix, weighting, co, sq)
        return co, sq

    def fit(self, data: TrainData, validation: Validation | None = None) -> ItemKNNScorer:
        co, sq = self._cooccurrence(data)
        a = float(self.params["alpha"])
        left = np.power(sq, a).astype(np.float32)  # history item i
        right = np.power(sq, 1.0 - a).astype(np.float32)  # candidate j
        sim = co / (np.outer(left, right) + np.float32(self.params["shrink"] + 1e-9))
        np.fill_diagonal(sim, 0.0)
        k = int(self.params["neighbours"])
        if k < sim.shape[1]:
            cut = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            rows = np.repeat(np.arange(sim.shape[0]), k)
            vals = np.take_along_axis(sim, cut, axis=1).ravel()
            pruned = sp.csr_matrix((vals, (rows, cut.ravel())), shape=sim.shape)
        else:
            pruned = sp.csr_matrix(sim)
        pruned.eliminate_zeros()
        self.sim = pruned.astype(np.float32)  # row i: item i's neighbours
        self.data = data
        return self

    def history_weights(self, user_rows: Rows) -> sp.csr_matrix:
        """Each user's history as weights over items: 1, or decayed by recency."""
        assert self.data is not None
        half_life = float(self.params["half_life"])
        if half_life <= 0:
            return self.data.matrix[user_rows].astype(np.float32)
        sequences = [self.data.sequences[r] for r in user_rows.tolist()]
        return recency_weights(sequences, self.data.n_items, half_life)

    def scores(self, user_rows: Rows) -> Floats:
        assert self.sim is not None
        out = (self.history_weights(user_rows) @ self.sim).toarray()
        return np.asarray(out, dtype=np.float32)
