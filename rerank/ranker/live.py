"""Events that arrived after the ranking stage's tables were fitted (the online store's live
events), read by the features and the popularity source as if they were in the fitted log.

The tables (co-visitation, co-occurrence, ALS, text) stay the nightly build's; what reads
events at request time (the windowed counts, the item's age and mean rating, the global mean,
the recent-popularity source) answers from the fitted log plus the new events, exactly as one
log holding both would, without re-sorting the fitted one: a call pays for the new events only.
"""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt

from rerank.ranker.candidates import CandidateStage
from rerank.ranker.features import EventLog, LogQueries
from rerank.ranker.popular import LogPopularitySource


class LiveLog(LogQueries):
    """A fitted log and the events that arrived since, answered as one log."""

    def __init__(self, fitted: LogQueries, live: EventLog) -> None:
        self.fitted = fitted
        self.live = live
        self.rating_total = fitted.rating_total + live.rating_total
        self.rated_total = fitted.rated_total + live.rated_total
        self.end = max(fitted.end, live.end)

    def count_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = self.fitted.count_before(cols, ats) + self.live.count_before(
            cols, ats
        )
        return out

    def first_time(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        mine, theirs = self.fitted.has_events(cols), self.live.has_events(cols)
        a, b = self.fitted.first_time(cols), self.live.first_time(cols)
        out: npt.NDArray[np.int64] = np.where(mine & theirs, np.minimum(a, b), np.where(mine, a, b))
        return out

    def has_events(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.fitted.has_events(cols) | self.live.has_events(cols)
        return out

    def rating_totals_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        s1, n1 = self.fitted.rating_totals_before(cols, ats)
        s2, n2 = self.live.rating_totals_before(cols, ats)
        return s1 + s2, n1 + n2

    def global_totals_before(self, at: int) -> tuple[float, int]:
        s1, n1 = self.fitted.global_totals_before(at)
        s2, n2 = self.live.global_totals_before(at)
        return s1 + s2, n1 + n2


def with_live(
    stage: CandidateStage,
    cols: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    ratings: npt.NDArray[np.float64],
) -> CandidateStage:
    """``stage`` reading these events (item columns, times, ratings with NaN for none) as if
    its log held them; the stage itself is not changed (calls in flight keep theirs)."""
    if not len(cols):
        return stage
    out = copy.copy(stage)
    out.features = copy.copy(stage.features)
    log = LiveLog(stage.features.log, EventLog(len(stage.item_ids), cols, times, ratings))
    out.features.log = log
    out.sources = [
        s.with_log(log) if isinstance(s, LogPopularitySource) else s for s in stage.sources
    ]
    return out
