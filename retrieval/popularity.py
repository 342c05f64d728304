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
        self.item_ids = list(item_ids)
        pos = {item_id: i for i, item_id in enumerate(self.item_ids)}
        rows = np.array([pos.get(i, -1) for i in interactions.item_ids.tolist()], dtype=np.int64)
        self.counts = np.bincount(rows[rows >= 0], minlength=len(self.item_ids)).astype(np.int64)
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
