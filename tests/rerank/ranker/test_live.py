"""Live events on top of a fitted stage answer exactly as one log holding both would."""

from __future__ import annotations

import itertools

import numpy as np

from rerank.ranker.features import DAY, EventLog
from rerank.ranker.live import LiveEvents, LiveLog
from rerank.ranker.popular import LogPopularitySource


def _events(
    rng: np.random.Generator, n: int, items: int, t0: int, t1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = rng.integers(0, items, n).astype(np.int64)
    times = rng.integers(t0, t1, n).astype(np.int64)
    ratings = np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 11, n) / 2.0)
    return cols, times, ratings


def test_a_live_log_answers_as_the_merged_log() -> None:
    rng = np.random.default_rng(0)
    items = 40  # items 35..39 have no fitted event: some only live, some none at all
    fitted = _events(rng, 600, 35, 1_000, 50_000)
    live = _events(rng, 80, items, 45_000, 60_000)  # overlapping the fitted log's end
    merged = EventLog(items, *(np.concatenate(p) for p in zip(fitted, live, strict=True)))
    both = LiveLog(EventLog(items, *fitted), EventLog(items, *live))
    ats = (0, 1_000, 30_000, 45_000, 52_345, 60_000, 10**6)
    has = _assert_answers_as(both, merged, items, ats, atol=1e-12)
    cols = np.arange(items, dtype=np.int64)
    assert has[35:].any() and not EventLog(items, *fitted).has_events(cols[35:]).any()
    assert np.isclose(both.global_mean, merged.global_mean)


def _assert_answers_as(
    both: LiveLog, merged: EventLog, items: int, times: tuple[int, ...], atol: float
) -> np.ndarray:
    """Every question the features ask, of every item at each time: the one log's answer.
    Returns which items have events."""
    cols = np.arange(items, dtype=np.int64)
    for at in times:
        ats = np.full(items, at, dtype=np.int64)
        np.testing.assert_array_equal(both.count_before(cols, ats), merged.count_before(cols, ats))
        np.testing.assert_allclose(
            both.shrunk_mean_before(cols, ats), merged.shrunk_mean_before(cols, ats), atol=atol
        )
        assert np.isclose(both.global_mean_before(at), merged.global_mean_before(at))
    has = merged.has_events(cols)
    np.testing.assert_array_equal(both.has_events(cols), has)
    np.testing.assert_array_equal(both.first_time(cols)[has], merged.first_time(cols)[has])
    return has


def test_live_events_taken_poll_by_poll_answer_as_one_log_in_few_segments() -> None:
    """A steady stream: every poll's events sorted once, merged into older segments only when
    those are not twice their size, and every answer still the one log's."""
    rng = np.random.default_rng(2)
    items = 50
    fitted = EventLog(items, *_events(rng, 500, 45, 1_000, 40_000))
    events, taken = LiveEvents(items), []
    for poll in range(40):
        batch = _events(rng, int(rng.integers(1, 30)), items, 38_000 + poll, 90_000)
        taken.append(batch)
        before = events
        events = events.add(*batch)
        assert before.count + len(batch[0]) == events.count  # a new object; the old kept
        sizes = [len(s.cols) for s in events.segments]
        assert all(a >= 2 * b for a, b in itertools.pairwise(sizes)), sizes
    assert len(events.segments) <= np.log2(events.count) + 1
    merged = EventLog(
        items, *(np.concatenate([f, *(t[k] for t in taken)]) for k, f in enumerate(_arrays(fitted)))
    )
    both = LiveLog(fitted, [s.log for s in events.segments])
    _assert_answers_as(both, merged, items, (0, 39_000, 60_000, 10**6), atol=1e-9)
    assert events.add(*_events(rng, 0, items, 0, 1)) is events  # nothing new: the same


def _arrays(log: EventLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A log's events back as columns (ratings from its running sums)."""
    rated = np.diff(log.rated).astype(bool)
    values = np.diff(log.rating_sum)
    return log.cols, log.times, np.where(rated, values, np.nan)


def test_the_popularity_source_counts_live_events_as_logged_ones() -> None:
    rng = np.random.default_rng(1)
    ids = [str(i) for i in range(30)]
    fitted = _events(rng, 400, 30, 0, 20 * DAY)
    extra = _events(rng, 50, 30, 18 * DAY, 26 * DAY)
    merged = LogPopularitySource(
        ids, EventLog(30, *(np.concatenate(p) for p in zip(fitted, extra, strict=True))), days=5
    )
    source = LogPopularitySource(ids, EventLog(30, *fitted), days=5)
    live = source.with_log(LiveLog(source.log, EventLog(30, *extra)))
    for at in (None, 10 * DAY + 5, 20 * DAY, 25 * DAY + 3_600):
        np.testing.assert_array_equal(live.counts_at(at), merged.counts_at(at))
    assert not np.array_equal(live.counts_at(None), source.counts_at(None))


def test_the_popularity_window_starts_at_a_day_boundary() -> None:
    ids = ["a", "b"]
    at = 10 * DAY + 12 * 3_600  # noon of day 10
    log = EventLog(  # "a" at 06:00 of day 6, "b" at 23:00 of day 5
        2,
        np.array([0, 1], np.int64),
        np.array([6 * DAY + 6 * 3_600, 5 * DAY + 23 * 3_600], np.int64),
        np.array([np.nan, np.nan]),
    )
    four_days = LogPopularitySource(ids, log, days=4)
    # the window starts at midnight four days before the request's day (day 6), not at noon
    np.testing.assert_array_equal(four_days.counts_at(at), [1, 0])
    np.testing.assert_array_equal(four_days.counts_at(at + DAY), [0, 0])
    np.testing.assert_array_equal(four_days.counts_at(at - DAY), [1, 1])


def test_live_events_past_the_fold_size_are_counted_by_day_as_one_log_answers() -> None:
    """Once ``fold_every`` events have come, the segments become per-item counts by day: what a
    request after the events asks (every event; those before a window's start, a day boundary)
    is still the one log's answer, and memory no longer grows with the events. Any other time
    is refused, naming it."""
    import pytest

    from rerank.ranker.live import LiveCounts

    rng = np.random.default_rng(4)
    items = 30
    fitted = EventLog(items, *_events(rng, 400, 25, 0, 20 * DAY))
    events, taken = LiveEvents(items, fold_every=60), []
    for _ in range(40):  # three days of live events
        batch = _events(rng, int(rng.integers(1, 12)), items, 20 * DAY, 23 * DAY)
        taken.append(batch)
        events = events.add(*batch)
        assert sum(len(s.cols) for s in events.segments) < 60
    assert isinstance(events.counts, LiveCounts) and events.counts.count > 60
    assert events.count == sum(len(t[0]) for t in taken)
    assert len(events.counts.days) == 3
    assert events.counts.nbytes == items * 8 * 4 + 3 * items * 4  # items x days, no events
    merged = EventLog(
        items, *(np.concatenate([f, *(t[k] for t in taken)]) for k, f in enumerate(_arrays(fitted)))
    )
    both = LiveLog(fitted, events.logs)
    end = merged.end
    _assert_answers_as(both, merged, items, (end, end + 5, 30 * DAY), atol=1e-9)
    cols = np.arange(items, dtype=np.int64)
    for boundary in (0, 19 * DAY, 20 * DAY, 21 * DAY, 22 * DAY, 23 * DAY):
        ats = np.full(items, boundary, dtype=np.int64)
        np.testing.assert_array_equal(both.count_before(cols, ats), merged.count_before(cols, ats))
    with pytest.raises(ValueError, match=f"a count at {21 * DAY + 7}: .*day boundary"):
        both.count_before(cols, np.full(items, 21 * DAY + 7, dtype=np.int64))
    with pytest.raises(ValueError, match="a rating mean at"):
        both.shrunk_mean_before(cols, np.full(items, 21 * DAY, dtype=np.int64))
