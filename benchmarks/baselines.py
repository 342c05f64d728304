"""Collaborative baselines for offline evaluation: popularity, ALS, BPR and item-kNN.

Each is a scorer: ``fit(matrix)`` on a users x items interaction matrix, then
``scores(user_rows)`` gives a dense (n, items) block; ranking, exclusion of seen items and
metrics are shared by every method in :mod:`benchmarks.evaluation`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

Floats = npt.NDArray[np.float32]


class Scorer(ABC):
    """A method that scores every item for a block of users."""

    name: str = ""
    params: dict[str, Any]

    @abstractmethod
    def fit(self, matrix: sp.csr_matrix) -> Scorer:
        """Learns from a binary users x items matrix."""

    @abstractmethod
    def scores(self, user_rows: npt.NDArray[np.int64]) -> Floats:
        """(len(user_rows), n_items) scores; higher is better."""


class PopularityScorer(Scorer):
    """Interaction count per item."""

    name = "popularity"

    def __init__(self) -> None:
        self.params = {}
        self.counts: Floats = np.zeros(0, dtype=np.float32)

    def fit(self, matrix: sp.csr_matrix) -> PopularityScorer:
        self.counts = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()
        return self

    def scores(self, user_rows: npt.NDArray[np.int64]) -> Floats:
        return np.tile(self.counts, (len(user_rows), 1))


class ImplicitScorer(Scorer):
    """ALS or BPR from the ``implicit`` package (CPU), scored by factor dot products."""

    def __init__(
        self,
        kind: str,
        *,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 20,
        alpha: float = 1.0,
        learning_rate: float = 0.01,
        seed: int = 0,
    ) -> None:
        if kind not in ("als", "bpr"):
            raise ValueError(f"kind must be 'als' or 'bpr', got {kind!r}")
        self.kind = kind
        self.name = kind
        self.params = {
            "factors": factors,
            "regularization": regularization,
            "iterations": iterations,
            "seed": seed,
        }
        if kind == "als":
            self.params["alpha"] = alpha
        else:
            self.params["learning_rate"] = learning_rate
        self.user_factors: Floats = np.zeros((0, 0), dtype=np.float32)
        self.item_factors: Floats = np.zeros((0, 0), dtype=np.float32)

    def fit(self, matrix: sp.csr_matrix) -> ImplicitScorer:
        import implicit
        from threadpoolctl import threadpool_limits

        from retrieval.als import implicit_als

        p = self.params
        if self.kind == "als":  # the same fit as the trained tower's collaborative block
            self.user_factors, self.item_factors = implicit_als(
                matrix, p["factors"], p["regularization"], p["alpha"], p["iterations"], p["seed"]
            )
            return self
        model = implicit.cpu.bpr.BayesianPersonalizedRanking(
            factors=p["factors"],
            regularization=p["regularization"],
            iterations=p["iterations"],
            learning_rate=p["learning_rate"],
            random_state=p["seed"],
            num_threads=1,  # Hogwild SGD over several threads is not reproducible run to run
        )
        with threadpool_limits(1, "blas"):  # implicit's own advice: BLAS threads fight it
            model.fit(matrix.astype(np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def scores(self, user_rows: npt.NDArray[np.int64]) -> Floats:
        out: Floats = self.user_factors[user_rows] @ self.item_factors.T
        return out


class ItemKNNScorer(Scorer):
    """Item-based kNN: cosine similarity of item columns, each user's items summed.

    ``neighbours`` keeps each item's top neighbours (the usual sparsification); ``shrink``
    damps similarities built on few co-occurrences (Sarwar et al., WWW 2001).
    """

    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrink: float = 10.0) -> None:
        self.params = {"neighbours": neighbours, "shrink": shrink}
        self.matrix: sp.csr_matrix | None = None
        self.sim: sp.csr_matrix | None = None

    def fit(self, matrix: sp.csr_matrix) -> ItemKNNScorer:
        x = matrix.astype(np.float32).tocsc()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        co = (x.T @ x).toarray()
        np.fill_diagonal(co, 0.0)
        sim = co / (np.outer(norms, norms) + self.params["shrink"] + 1e-9)
        k = int(self.params["neighbours"])
        if k < sim.shape[1]:
            cut = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            keep = np.zeros_like(sim, dtype=bool)
            np.put_along_axis(keep, cut, True, axis=1)
            sim = np.where(keep, sim, 0.0)
        self.sim = sp.csr_matrix(sim.astype(np.float32))  # row i: item i's neighbours
        self.matrix = matrix.tocsr()
        return self

    def scores(self, user_rows: npt.NDArray[np.int64]) -> Floats:
        assert self.matrix is not None and self.sim is not None
        out = (self.matrix[user_rows].astype(np.float32) @ self.sim).toarray()
        return np.asarray(out, dtype=np.float32)
