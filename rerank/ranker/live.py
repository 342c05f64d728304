"""Events that arrived after the ranking stage's tables were fitted (the online store's live
events), read by the features and the popularity source as if they were in the fitted log.

The tables (co-visitation, co-occurrence, ALS, text) stay the nightly build's; what reads
events at request time (the windowed counts, the item's age and mean rating, the global mean,
the recent-popularity source) answers from the fitted log plus the new events, exactly as one
log holding both would, without re-sorting the fitted one. The new events are held as a few
sorted segments (:class:`LiveEvents`), each at least twice the size of the next newer one, so
taking a poll's events sorts those and, amortised, merges each event O(log N) times: a serving
process under a steady stream never re-sorts everything it holds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rerank.ranker.candidates import CandidateStage
from rerank.ranker.features import EventLog, LogQueries
from rerank.ranker.popular import LogPopularitySource


@dataclass(frozen=True)
class Segment:
    """One sorted run of live events, with the columns it was sorted from (for merging)."""

    log: EventLog
    cols: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float64]


@dataclass(frozen=True)
class LiveEvents:
    """The live events so far, oldest segment first; never changed in place (:meth:`add`
    returns a new one), so a call in flight keeps reading what it started with."""

    n_items: int
    segments: tuple[Segment, ...] = ()

    @property
    def count(self) -> int:
        """Events held."""
        return sum(len(s.cols) for s in self.segments)

    def add(
        self,
        cols: npt.NDArray[np.int64],
        times: npt.NDArray[np.int64],
        ratings: npt.NDArray[np.float64],
    ) -> LiveEvents:
        """These events too: a new segment, merged into the older ones while the older is not
        at least twice its size."""
        if not len(cols):
            return self
        runs = [*self.segments, _segment(self.n_items, cols, times, ratings)]
        while len(runs) > 1 and len(runs[-2].cols) < 2 * len(runs[-1].cols):
            older, newer = runs[-2], runs.pop()
            runs[-1] = _segment(
                self.n_items,
                np.concatenate([older.cols, newer.cols]),
                np.concatenate([older.times, newer.times]),
                np.concatenate([older.ratings, newer.ratings]),
            )
        return LiveEvents(self.n_items, tuple(runs))


def _segment(
    n_items: int,
    cols: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    ratings: npt.NDArray[np.float64],
) -> Segment:
    return Segment(EventLog(n_items, cols, times, ratings), cols, times, ratings)


class LiveLog(LogQueries):
    """A fitted log and the events that arrived since (one log or several segments), answered
    as one log."""

    def __init__(self, fitted: LogQueries, live: EventLog | Sequence[EventLog]) -> None:
        self.fitted = fitted
        self.lives = [live] if isinstance(live, EventLog) else list(live)
        self.rating_total = fitted.rating_total + sum(x.rating_total for x in self.lives)
        self.rated_total = fitted.rated_total + sum(x.rated_total for x in self.lives)
        self.end = max([fitted.end, *(x.end for x in self.lives)])

    def count_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = self.fitted.count_before(cols, ats)
        for live in self.lives:
            out = out + live.count_before(cols, ats)
        return out

    def first_time(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        has = self.fitted.has_events(cols)
        out: npt.NDArray[np.int64] = self.fitted.first_time(cols)
        for live in self.lives:
            theirs = live.has_events(cols)
            b = live.first_time(cols)
            out = np.where(has & theirs, np.minimum(out, b), np.where(has, out, b))
            has = has | theirs
        return out

    def has_events(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.fitted.has_events(cols)
        for live in self.lives:
            out = out | live.has_events(cols)
        return out

    def rating_totals_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        total, n = self.fitted.rating_totals_before(cols, ats)
        for live in self.lives:
            s2, n2 = live.rating_totals_before(cols, ats)
            total, n = total + s2, n + n2
        return total, n

    def global_totals_before(self, at: int) -> tuple[float, int]:
        total, n = self.fitted.global_totals_before(at)
        for live in self.lives:
            s2, n2 = live.global_totals_before(at)
            total, n = total + s2, n + n2
        return total, n


def with_live(stage: CandidateStage, events: LiveEvents) -> CandidateStage:
    """``stage`` reading these events as if its log held them; the stage itself is not
    changed (calls in flight keep theirs)."""
    if not events.segments:
        return stage
    out = copy.copy(stage)
    out.features = copy.copy(stage.features)
    log = LiveLog(stage.features.log, [s.log for s in events.segments])
    out.features.log = log
    out.sources = [
        s.with_log(log) if isinstance(s, LogPopularitySource) else s for s in stage.sources
    ]
    return out
