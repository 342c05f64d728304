"""Popularity: the cold-start fallback and the simplest honest baseline."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from catalog.model import Interactions


class Popularity:
    """Items ranked by interaction count in a training log (ties: lower position first).

    Args:
        interactions: the training interactions.
        item_ids: the catalog's ids (items absent from the log count zero).
    """

    def __init__(self, interactions: Interactions, item_ids: Sequence[str]) -> None:
        pos = {item_id: i for i, item_id in enumerate(item_ids)}
        rows = np.array([pos.get(i, -1) for i in interactions.item_ids.tolist()], dtype=np.int64)
        self._set(item_ids, np.bincount(rows[rows >= 0], minlength=len(item_ids)))

    @classmethod
    def from_counts(cls, item_ids: Sequence[str], counts: Sequence[int]) -> Popularity:
        """From each item's count (a serving process that holds per-item totals, not the log).

        Raises:
            ValueError: ``counts`` and ``item_ids`` differ in length.
        """
        if len(counts) != len(item_ids):
            raise ValueError(f"{len(counts)} counts for {len(item_ids)} items")
        out = cls.__new__(cls)
        out._set(item_ids, np.asarray(counts))
        return out

    def _set(self, item_ids: Sequence[str], counts: np.ndarray) -> None:
        self.item_ids = list(item_ids)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.order = np.argsort(-self.counts, kind="stable")

    def top(self, k: int, exclude: Collection[str] = ()) -> list[str]:
        """The ``k`` most popular ids not in ``exclude``."""
        out: list[str] = []
        for p in self.order:
            item_id = self.item_ids[p]
            if item_id not in exclude:
                out.append(item_id)
                if len(out) == k:
                    break
        return out
