"""The ranking stage's log as a serving process needs it: per-item totals and counts at the
day boundaries its windows can start at, not every event.

The windowed counts start at a day boundary (:func:`window_start`), and a served request comes
after the log's end, so every question the features ask of the fitted log is one of: an item's
events before the log's end (all of them), before a window's start (a day boundary within the
window's length before the end), its first event, its rating totals, and the global ones.
:class:`DayCounts` holds exactly those answers: a few hundred bytes an item, none a user.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from rerank.ranker.features import DAY, WINDOWS, EventLog, LogQueries, day_start

HORIZON = 14
"""Days after the log's end for which every window's start is stored exactly; a build older than
this serves windows whose start stops at the last stored day (the nightly build replaces it)."""


def boundaries(end: int, windows: Sequence[int] = WINDOWS, horizon: int = HORIZON) -> list[int]:
    """Every day boundary before ``end`` a window can start at for a request in the ``horizon``
    days from ``end``'s day on."""
    first = int(day_start(end - 1)) if end > 0 else 0
    out = {first + (j - w) * DAY for w in windows for j in range(horizon + 1)}
    return sorted(b for b in out if b < end)


class DayCounts(LogQueries):
    """The answers :class:`~rerank.ranker.features.RankingFeatures` reads from a log, for
    requests at or after ``end`` (its events are all before ``end``).

    Attributes:
        end: one second after the log's last event.
        bounds: the stored day boundaries (sorted).
        at_bounds: (items, bounds) events of each item before each boundary.
        total, first, has: each item's events, first event time, whether it has any.
        rating_sum, rating_n: each item's sum and number of ratings.
    """

    def __init__(
        self,
        end: int,
        bounds: npt.NDArray[np.int64],
        at_bounds: npt.NDArray[np.int32],
        total: npt.NDArray[np.int64],
        first: npt.NDArray[np.int64],
        rating_sum: npt.NDArray[np.float64],
        rating_n: npt.NDArray[np.int64],
    ) -> None:
        self.end = int(end)
        self.bounds = np.asarray(bounds, np.int64)
        self.at_bounds = np.asarray(at_bounds, np.int32)
        self.total = np.asarray(total, np.int64)
        self.first = np.asarray(first, np.int64)
        self.has = self.total > 0
        self.rating_sum = np.asarray(rating_sum, np.float64)
        self.rating_n = np.asarray(rating_n, np.int64)
        self.rating_total = float(self.rating_sum.sum())
        self.rated_total = int(self.rating_n.sum())

    @classmethod
    def of(cls, log: EventLog, horizon: int = HORIZON) -> DayCounts:
        """The answers of ``log`` (an :class:`EventLog`) for requests after its last event."""
        end = log.end
        bounds = np.array(boundaries(end, WINDOWS, horizon), dtype=np.int64)
        cols = np.arange(log.n_items, dtype=np.int64)
        at_bounds = (
            np.stack(
                [log.count_before(cols, np.full(log.n_items, b, np.int64)) for b in bounds], axis=1
            )
            if len(bounds)
            else np.zeros((log.n_items, 0), np.int64)
        )
        total = log.count_before(cols, np.full(log.n_items, end, np.int64))
        rating_sum, rating_n = log.rating_totals_before(cols, np.full(log.n_items, end, np.int64))
        return cls(
            end,
            bounds,
            at_bounds.astype(np.int32),
            total,
            log.first_time(cols),
            rating_sum,
            rating_n,
        )

    def _after_end(self, ats: npt.NDArray[np.int64], what: str) -> None:
        early = np.asarray(ats) < self.end
        if np.any(early):
            raise ValueError(
                f"{what} at {int(np.asarray(ats)[early].min())}: the build's tables answer "
                f"requests from their log's end ({self.end}) on"
            )

    def count_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """At or after the end: every event; before it: the events before the latest stored
        boundary at or before ``ats`` (exact at a stored boundary)."""
        if np.ndim(ats) == 0 and np.ndim(cols) == 1:  # one time (the popularity source)
            return self._count_at(np.asarray(cols), int(ats))
        cols, ats = np.broadcast_arrays(np.asarray(cols), np.asarray(ats))
        out = self.total[cols].copy()
        early = ats < self.end
        if np.any(early):
            pos = np.searchsorted(self.bounds, ats[early], side="right") - 1
            if np.any(pos < 0):
                self._before_first_day(int(ats[early][pos < 0].min()))
            out[early] = self.at_bounds[cols[early], pos]
        result: npt.NDArray[np.int64] = out
        return result

    def _count_at(self, cols: npt.NDArray[np.int64], at: int) -> npt.NDArray[np.int64]:
        """:meth:`count_before` at one time: one boundary looked up, one column read."""
        if at >= self.end:
            total: npt.NDArray[np.int64] = self.total[cols].copy()
            return total
        pos = int(np.searchsorted(self.bounds, at, side="right")) - 1
        if pos < 0:
            self._before_first_day(at)
        out: npt.NDArray[np.int64] = self.at_bounds[cols, pos].astype(self.total.dtype)
        return out

    def _before_first_day(self, at: int) -> None:
        first = int(self.bounds[0]) if len(self.bounds) else self.end
        raise ValueError(
            f"a window starting at {at} is before the build's earliest stored day ({first}): "
            f"the build's tables answer requests from their log's end ({self.end}) on"
        )

    def first_time(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = self.first[cols]
        return out

    def has_events(self, cols: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.has[cols]
        return out

    def rating_totals_before(
        self, cols: npt.NDArray[np.int64], ats: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        self._after_end(ats, "a rating mean")
        cols = np.broadcast_arrays(np.asarray(cols), np.asarray(ats))[0]
        return self.rating_sum[cols], self.rating_n[cols]

    def global_totals_before(self, at: int) -> tuple[float, int]:
        self._after_end(np.array([at]), "the global mean")
        return self.rating_total, self.rated_total

    def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Everything, by name (what :meth:`from_arrays` reads back)."""
        return {
            "day_end": np.array([self.end], np.int64),
            "day_bounds": self.bounds,
            "day_at_bounds": self.at_bounds,
            "day_total": self.total,
            "day_first": self.first,
            "day_rating_sum": self.rating_sum,
            "day_rating_n": self.rating_n,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> DayCounts:
        """What :meth:`arrays` returned."""
        return cls(
            int(np.asarray(arrays["day_end"])[0]),
            np.asarray(arrays["day_bounds"], np.int64),
            np.asarray(arrays["day_at_bounds"], np.int32),
            np.asarray(arrays["day_total"], np.int64),
            np.asarray(arrays["day_first"], np.int64),
            np.asarray(arrays["day_rating_sum"], np.float64),
            np.asarray(arrays["day_rating_n"], np.int64),
        )
