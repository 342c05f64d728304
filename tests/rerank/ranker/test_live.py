"""Live events on top of a fitted stage answer exactly as one log holding both would."""

from __future__ import annotations

import numpy as np

from rerank.ranker.features import EventLog
from rerank.ranker.live import LiveLog
from retrieval.sources import RecentPopularitySource


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
    cols = np.arange(items, dtype=np.int64)
    for at in (0, 1_000, 30_000, 45_000, 52_345, 60_000, 10**6):
        ats = np.full(items, at, dtype=np.int64)
        np.testing.assert_array_equal(both.count_before(cols, ats), merged.count_before(cols, ats))
        np.testing.assert_allclose(
            both.shrunk_mean_before(cols, ats), merged.shrunk_mean_before(cols, ats), atol=1e-12
        )
        assert np.isclose(both.global_mean_before(at), merged.global_mean_before(at))
    has = merged.has_events(cols)
    np.testing.assert_array_equal(both.has_events(cols), has)
    assert has[35:].any() and not EventLog(items, *fitted).has_events(cols[35:]).any()
    np.testing.assert_array_equal(both.first_time(cols)[has], merged.first_time(cols)[has])
    assert np.isclose(both.global_mean, merged.global_mean)


def test_the_popularity_source_counts_live_events_as_logged_ones() -> None:
    rng = np.random.default_rng(1)
    ids = [str(i) for i in range(30)]
    cols, times, _ = _events(rng, 400, 30, 0, 100_000)
    extra_cols, extra_times, _ = _events(rng, 50, 30, 90_000, 130_000)
    window = 20_000
    merged = RecentPopularitySource(
        ids, np.concatenate([times, extra_times]), np.concatenate([cols, extra_cols]), window
    )
    live = RecentPopularitySource(ids, times, cols, window).with_events(extra_times, extra_cols)
    for at in (None, 50_000, 100_000, 125_000):
        np.testing.assert_array_equal(live.counts_at(at), merged.counts_at(at))
    assert not np.array_equal(
        live.counts_at(None), RecentPopularitySource(ids, times, cols, window).counts_at(None)
    )
