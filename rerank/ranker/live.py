"""Events that arrived after the ranking stage's tables were fitted (the online store's live
events), read by the features and the popularity source as if they were in the fitted log.

The tables (co-visitation, co-occurrence, ALS, text) stay the nightly build's; what reads
events at request time (the windowed counts, the item's age and mean rating, the global mean,
the recent-popularity source) answers from the fitted log plus the new events, exactly as one
log holding both would, without re-sorting the fitted one. The newest events are held as a few
sorted segments (:class:`LiveEvents`), each at least twice the size of the next newer one, so
taking a poll's events sorts those and merges only small runs; every ``fold_every`` events the
segments are added into per-item counts by day (:class:`LiveCounts`), which is all a request
after them asks: a worker's memory and its slowest read stay flat however many events pile up
between two builds, and a call queries a few arrays instead of every segment.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from rerank.ranker.candidates import CandidateStage
from rerank.ranker.features import DAY, EventLog, LogQueries, day_start
from rerank.ranker.popular import LogPopularitySource

FOLD_EVERY = 20_000
"""Live events held as sorted segments before they are added into per-item day counts: the
largest merge a poll can trigger (a few milliseconds), and the copy of the counts it costs."""
NO_EVENT = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Segment:
    """One sorted run of live events, with the columns it was sorted from (for merging)."""

    log: EventLog
    cols: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float64]


class LiveCounts(LogQueries):
    """Live events as per-item counts: in all, by UTC day, and rating totals. That answers
    every question a request at or after :attr:`end` asks (all the events; those before a
    window's start, a day boundary); any other time is refused, naming it. Never changed in
    place: :meth:`add` returns a new one (an item array copied, a day's counts copied only
    where that day has new events)."""

    def __init__(
        self,
        n_items: int,
        total: npt.NDArray[np.int64] | None = None,
        first: npt.NDArray[np.int64] | None = None,
        rating_sum: npt.NDArray[np.float64] | None = None,
        rating_n: npt.NDArray[np.int64] | None = None,
        days: dict[int, npt.NDArray[np.int32]] | None = None,
        end: int = 0,
    ) -> None:
        self.n_items = n_items
        self.total = np.zeros(n_items, np.int64) if total is None else total
        self.first = np.full(n_items, NO_EVENT, np.int64) if first is None else first
        self.rating_sum = np.zeros(n_items, np.float64) if rating_sum is None else rating_sum
        self.rating_n = np.zeros(n_items, np.int64) if rating_n is None else rating_n
        self.days = dict(days or {})
        """Day start -> each item's events that day."""
        self.end = end
        self.rating_total = float(self.rating_sum.sum())
        self.rated_total = int(self.rating_n.sum())

    @property
    def count(self) -> int:
        """Events counted."""
        return int(self.total.sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the counts: items x (4 arrays + one a day with events)."""
        arrays: list[npt.NDArray[np.generic]] = [
            self.total,
            self.first,
            self.rating_sum,
            self.rating_n,
            *self.days.values(),
        ]
        return sum(a.nbytes for a in arrays)

    def add(
        self,
        cols: npt.NDArray[np.int64],
        times: npt.NDArray[np.int64],
        ratings: npt.NDArray[np.float64],
    ) -> LiveCounts:
        """These events counted too."""
        if not len(cols):
            return self
        n = self.n_items
        total = self.total + np.bincount(cols, minlength=n)
        first = self.first.copy()
        np.minimum.at(first, cols, times)
        rated = ~np.isnan(ratings)
        rating_sum = self.rating_sum + np.bincount(cols[rated], weights=ratings[rated], minlength=n)
        rating_n = self.rating_n + np.bincount(cols[rated], minlength=n)
        days = dict(self.days)
        starts = day_start(times)
        for day in np.unique(starts).tolist():
            new = np.bincount(cols[starts == day], minlength=n).astype(np.int32)
            days[day] = days[day] + new if day in days else new
        end = max(self.end, int(times.max()) + 1)
        return LiveCounts(self.n_items, total, first, rating_sum, rating_n, days, end)

    def _refuse(self, ats: npt.NDArray[np.int64], what: str) -> None:
        raise ValueError(
            f"{what} at {int(ats.min())}: the live events' counts answer requests from their "
            f"newest event ({self.end - 1}) on, and windows starting at a day boundary"
        )

    def count_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        cols, ats = np.broadcast_arrays(np.asarray(cols), np.asarray(ats, np.int64))
        out: npt.NDArray[np.int64] = self.total[cols].copy()
        early = ats < self.end
        if not np.any(early):
            return out
        if np.any(ats[early] % DAY):
            self._refuse(ats[early][ats[early] % DAY != 0], "a count")
        out[early] = 0
        for day, counts in self.days.items():
            before = early & (ats > day)  # the whole day lies before a boundary after its start
            out[before] += counts[cols[before]]
        return out

    def first_time(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = self.first[cols]
        return out

    def has_events(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.total[cols] > 0
        return out

    def rating_totals_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        cols, ats = np.broadcast_arrays(np.asarray(cols), np.asarray(ats, np.int64))
        if np.any(ats < self.end):
            self._refuse(ats[ats < self.end], "a rating mean")
        return self.rating_sum[cols], self.rating_n[cols]

    def global_totals_before(self, at: int) -> tuple[float, int]:
        if at < self.end:
            self._refuse(np.array([at]), "the global mean")
        return self.rating_total, self.rated_total


@dataclass(frozen=True)
class LiveEvents:
    """The live events so far: counts of the older ones (:class:`LiveCounts`, once
    ``fold_every`` have come) and the newest as sorted segments, oldest first; never changed
    in place (:meth:`add` returns a new one), so a call in flight keeps reading what it
    started with."""

    n_items: int
    segments: tuple[Segment, ...] = ()
    counts: LiveCounts | None = None
    fold_every: int = FOLD_EVERY

    @property
    def count(self) -> int:
        """Events held."""
        counted = self.counts.count if self.counts is not None else 0
        return counted + sum(len(s.cols) for s in self.segments)

    @property
    def logs(self) -> list[LogQueries]:
        """What a :class:`LiveLog` reads: the counts, then every segment."""
        head: list[LogQueries] = [self.counts] if self.counts is not None else []
        return [*head, *(s.log for s in self.segments)]

    def add(
        self,
        cols: npt.NDArray[np.int64],
        times: npt.NDArray[np.int64],
        ratings: npt.NDArray[np.float64],
    ) -> LiveEvents:
        """These events too: a new segment, merged into the older ones while the older is not
        at least twice its size; the segments added into the counts once they hold
        ``fold_every`` events."""
        if not len(cols):
            return self
        if sum(len(s.cols) for s in self.segments) + len(cols) >= self.fold_every:
            counts = self.counts if self.counts is not None else LiveCounts(self.n_items)
            counts = counts.add(  # counted as they are: no sort, no merge
                *(
                    np.concatenate([*(getattr(s, k) for s in self.segments), new])
                    for k, new in (("cols", cols), ("times", times), ("ratings", ratings))
                )
            )
            return replace(self, segments=(), counts=counts)
        runs = [*self.segments, _segment(self.n_items, cols, times, ratings)]
        while len(runs) > 1 and len(runs[-2].cols) < 2 * len(runs[-1].cols):
            older, newer = runs[-2], runs.pop()
            runs[-1] = _segment(
                self.n_items,
                np.concatenate([older.cols, newer.cols]),
                np.concatenate([older.times, newer.times]),
                np.concatenate([older.ratings, newer.ratings]),
            )
        return replace(self, segments=tuple(runs))


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

    def __init__(self, fitted: LogQueries, live: LogQueries | Sequence[LogQueries]) -> None:
        self.fitted = fitted
        self.lives = [live] if isinstance(live, LogQueries) else list(live)
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
    if not events.count:
        return stage
    out = copy.copy(stage)
    out.features = copy.copy(stage.features)
    log = LiveLog(stage.features.log, events.logs)
    out.features.log = log
    out.sources = [
        s.with_log(log) if isinstance(s, LogPopularitySource) else s for s in stage.sources
    ]
    return out
