"""Most interacted items first: the floor every method must clear."""

from __future__ import annotations

import numpy as np

from benchmarks.baselines.base import Floats, Rows, Scorer, TrainData, Validation


class PopularityScorer(Scorer):
    """Interaction count per item."""

    name = "popularity"

    def __init__(self) -> None:
        self.params = {}
        self.counts: Floats = np.zeros(0, dtype=np.float32)

    def fit(self, data: TrainData, validation: Validation | None = None) -> PopularityScorer:
        self.counts = np.asarray(data.matrix.sum(axis=0), dtype=np.float32).ravel()
        return self

    def scores(self, user_rows: Rows) -> Floats:
        return np.tile(self.counts, (len(user_rows), 1))
