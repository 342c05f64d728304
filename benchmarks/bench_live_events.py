"""`duorank bench live-events`: what a serving worker pays per read of the live events stream
as the events since the last fold pile up, segments (:class:`rerank.ranker.live.LiveEvents`)
against the straightforward way (one log of every live event, sorted again on each read).

A steady stream of 250 events a read (5,000 a second at the tail's 50 ms poll) over 9,742
items (ml-latest-small's catalog size), ratings on half. Segments take every read; the
straightforward rebuild is timed once at each checkpoint (its cost only grows). At each
checkpoint: the read's ms both ways (segments: the mean over the reads since the previous
checkpoint, merges included, their median and their slowest), the segments held, and one
call's queries (the 7 / 30 / 365-day counts and rating totals of 170 candidates)
against the segments and against the one log.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext, BenchReport, Target
from catalog.progress import Progress
from rerank.ranker.features import DAY, EventLog
from rerank.ranker.live import LiveEvents, LiveLog

ITEMS = 9_742
PER_READ = 250
CANDIDATES = 170
T0 = 1_700_000_000


def _batch(
    rng: np.random.Generator, n: int, t: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    cols = rng.integers(0, ITEMS, n).astype(np.int64)
    times = t + rng.integers(0, 60, n).astype(np.int64)
    ratings = np.where(rng.random(n) < 0.5, np.nan, rng.integers(1, 11, n) / 2.0)
    return cols, times, ratings


def _queries(log: Any, rng: np.random.Generator, at: int, repeats: int = 20) -> float:
    """Median ms of one call's log questions (counts and rating totals, three windows)."""
    cols = rng.integers(0, ITEMS, CANDIDATES).astype(np.int64)
    ats = np.full(CANDIDATES, at, dtype=np.int64)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for days in (7, 30, 365):
            log.count_before(cols, ats - days * DAY)
        log.count_before(cols, ats)
        log.rating_totals_before(cols, ats)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Reads until the largest checkpoint, timing both ways at each."""
    checkpoints = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000, 3_000_000)
    rng = np.random.default_rng(0)
    fitted = EventLog(ITEMS, *_batch(rng, 100_000, T0 - 30 * DAY))
    events = LiveEvents(ITEMS)
    parts: list[tuple[npt.NDArray[Any], ...]] = []
    reads: list[float] = []
    rows: list[dict[str, Any]] = []
    t = T0
    with Progress("live events", checkpoints[-1], "events") as bar:
        for checkpoint in checkpoints:
            reads = []
            while events.count < checkpoint:
                batch = _batch(rng, PER_READ, t)
                parts.append(batch)
                t += 1
                start = time.perf_counter()
                events = events.add(*batch)
                reads.append((time.perf_counter() - start) * 1000)
                bar.update(PER_READ)
            whole = [np.concatenate([p[k] for p in parts]) for k in range(3)]
            start = time.perf_counter()
            one = EventLog(ITEMS, *whole)  # what each read cost before: every event sorted
            rebuild_ms = (time.perf_counter() - start) * 1000
            segments = LiveLog(fitted, [s.log for s in events.segments])
            single = LiveLog(fitted, one)
            rows.append(
                {
                    "live_events": events.count,
                    "segments": len(events.segments),
                    "read_ms_segments": statistics.fmean(reads),
                    "read_ms_segments_p50": statistics.median(reads),
                    "read_ms_segments_max": max(reads),
                    "read_ms_rebuild": rebuild_ms,
                    "call_queries_ms_segments": _queries(segments, rng, t),
                    "call_queries_ms_one_log": _queries(single, rng, t),
                }
            )
    last = rows[-1]
    return BenchReport(
        name="live-events",
        params={
            "quick": quick,
            "items": ITEMS,
            "events_per_read": PER_READ,
            "candidates": CANDIDATES,
            "checkpoints": list(checkpoints),
        },
        results={"checkpoints": rows},
        targets=[
            Target(
                "read ms at the largest checkpoint, rebuild / segments (mean, merges included)",
                round(last["read_ms_rebuild"] / last["read_ms_segments"], 1),
                10.0,
            ),
            Target(
                "one call's log queries, segments / one log",
                round(last["call_queries_ms_segments"] / last["call_queries_ms_one_log"], 2),
                3.0,
                "<=",
            ),
        ],
        table=rows,
    )
