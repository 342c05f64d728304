"""What a serving process knows of the interaction log: per-item figures, never a user's.

The cold-user list (popularity), the cross-encoder's count and rating features and the clock
read the log only through these per-item totals. A process that holds the dataset's log
computes them from it (:meth:`LogStats.of`); a process that reads its users from the online
store loads the items alone and takes the same totals from the ranking stage's tables that
the index version carries (:meth:`LogStats.of_day_counts`), so its memory does not grow with
the users.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from catalog.model import Interactions
from rerank.cross_encoder.pairs import RatingStats
from retrieval.popularity import Popularity

if TYPE_CHECKING:
    from rerank.ranker.daycounts import DayCounts


@dataclass(frozen=True)
class LogStats:
    """Per-item totals of one log.

    Attributes:
        counts: each item's events (items without any absent).
        popularity: the catalog's items by those counts (the cold-user fallback).
        ratings: per-item rating sums and counts, and the global mean.
        end: the newest event's time (0 for an empty log): the clock never goes before it.
    """

    counts: dict[str, int]
    popularity: Popularity
    ratings: RatingStats
    end: int

    @classmethod
    def of(cls, interactions: Interactions, item_ids: Sequence[str]) -> LogStats:
        """From the events themselves."""
        times = interactions.timestamps
        return cls(
            dict(Counter(interactions.item_ids.tolist())),
            Popularity(interactions, item_ids),
            RatingStats.of(interactions),
            int(times.max()) if len(times) else 0,
        )

    @classmethod
    def of_day_counts(
        cls, counts: DayCounts, table_ids: Sequence[str], item_ids: Sequence[str]
    ) -> LogStats:
        """From the ranking stage's saved per-item answers (rows in ``table_ids`` order): the
        same totals as :meth:`of` over the log the tables were fitted on."""
        row = {i: n for n, i in enumerate(table_ids)}
        total = counts.total.tolist()
        per_item = {i: int(total[n]) for n, i in enumerate(table_ids) if total[n] > 0}
        rated = np.flatnonzero(counts.rating_n > 0).tolist()
        sums = {table_ids[n]: float(counts.rating_sum[n]) for n in rated}
        numbers = {table_ids[n]: int(counts.rating_n[n]) for n in rated}
        mean = counts.rating_total / counts.rated_total if counts.rated_total else 0.0
        return cls(
            per_item,
            Popularity.from_counts(
                item_ids, [int(total[row[i]]) if i in row else 0 for i in item_ids]
            ),
            RatingStats(float(mean), sums, numbers),
            counts.end - 1 if counts.total.any() else 0,
        )
