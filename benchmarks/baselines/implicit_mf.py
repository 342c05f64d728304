"""ALS and BPR matrix factorisation from the ``implicit`` package (CPU)."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.baselines.base import Floats, Rows, Scorer, TrainData, Validation


class ImplicitScorer(Scorer):
    """ALS or BPR, scored by factor dot products."""

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

    def refitted(self) -> ImplicitScorer:
        return ImplicitScorer(self.kind, **self.refit_params())

    def fit(self, data: TrainData, validation: Validation | None = None) -> ImplicitScorer:
        import implicit
        from threadpoolctl import threadpool_limits

        from retrieval.als import implicit_als

        p: dict[str, Any] = self.params
        matrix = data.matrix
        if self.kind == "als":  # the same fit as the trained tower's collaborative block
            self.user_factors, self.item_factors = implicit_als(
                matrix, p["factors"], p["regularization"], p["alpha"], p["iterations"], p["seed"]
            )
            return self
        with threadpool_limits(1, "blas"):  # implicit's own advice: BLAS threads fight it
            model = implicit.cpu.bpr.BayesianPersonalizedRanking(
                factors=p["factors"],
                regularization=p["regularization"],
                iterations=p["iterations"],
                learning_rate=p["learning_rate"],
                random_state=p["seed"],
                num_threads=1,  # Hogwild SGD over several threads is not reproducible
            )
            model.fit(matrix.astype(np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def scores(self, user_rows: Rows) -> Floats:
        out: Floats = self.user_factors[user_rows] @ self.item_factors.T
        return out
