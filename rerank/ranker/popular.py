"""The ranking stage's recent-popularity source, read from the stage's own log answers.

It counts each item's events in the window of whole days before the request's day plus that
day up to the request (:func:`rerank.ranker.features.window_start`), from the same
:class:`~rerank.ranker.features.LogQueries` the features read: an :class:`EventLog` in training
and evaluation, a build's :class:`~rerank.ranker.daycounts.DayCounts` in serving (no events
held), and live events on top of either (:mod:`rerank.ranker.live`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from rerank.ranker.features import LogQueries, window_start
from retrieval.sources import PopularitySource

POPULAR_DAYS = 30
"""Days of the recent-popularity source's window."""


class LogPopularitySource(PopularitySource):
    """The most interacted items in the ``days`` before the request (by its log's answers)."""

    def __init__(self, item_ids: Sequence[str], log: LogQueries, days: int = POPULAR_DAYS) -> None:
        super().__init__(item_ids)
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        self.log = log
        self.days = days
        self._all = np.arange(len(self.item_ids), dtype=np.int64)

    def with_log(self, log: LogQueries) -> LogPopularitySource:
        """The same source reading another log (say, the fitted one plus live events)."""
        out = copy.copy(self)
        out.log = log
        return out

    def counts_at(self, at: int | None) -> npt.NDArray[np.float64]:
        """Events per item in the window before ``at`` (the log's last window when None)."""
        end = self.log.end if at is None else at
        # one time for every item (a 0-d time: a log may answer it without broadcasting)
        now = self.log.count_before(self._all, np.asarray(end, np.int64))
        start = self.log.count_before(self._all, np.asarray(window_start(end, self.days)))
        return (now - start).astype(np.float64)
