"""`duorank bench live-events`: what a serving worker pays per read of the live events stream
as the events since the last fold pile up: the served way (:class:`rerank.ranker.live.
LiveEvents`: the newest events as sorted segments, added into per-item day counts every
``FOLD_EVERY``), the segments alone (the way before: every event kept, merged in segments), and
the straightforward way (one log of every live event, sorted again on each read).

A steady stream of 250 events a read (5,000 a second at the tail's 50 ms poll) over 9,742
items (ml-latest-small's catalog size), ratings on half. The two held ways take every read; the
straightforward rebuild is timed once at each checkpoint (its cost only grows). At each
checkpoint, for both held ways: the read's ms (the mean over the reads since the previous
checkpoint, merges and folds included, their median and their slowest), the segments held, the
bytes held, and one call's queries (the 7 / 30 / 365-day counts and rating totals of 170
candidates) against the one log's.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext, BenchReport, Target
from catalog.progress import Progress
from rerank.ranker.features import DAY, EventLog, window_start
from rerank.ranker.live import FOLD_EVERY, LiveEvents, LiveLog

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
            log.count_before(cols, window_start(ats, days))
        log.count_before(cols, ats)
        log.rating_totals_before(cols, ats)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _held_bytes(events: LiveEvents) -> int:
    """Bytes of the arrays a worker holds for these events (segments and counts)."""
    out = events.counts.nbytes if events.counts is not None else 0
    for s in events.segments:
        out += s.cols.nbytes + s.times.nbytes + s.ratings.nbytes
        out += sum(
            a.nbytes
            for a in vars(s.log).values()
            if isinstance(a, np.ndarray) and a is not s.cols and a is not s.times
        )
    return out


WAYS = {"counts": FOLD_EVERY, "segments": 2**62}
"""The served way (segments folded into day counts) and the way before (segments alone)."""


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Reads until the largest checkpoint, timing every way at each."""
    checkpoints = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000, 3_000_000)
    rng = np.random.default_rng(0)
    fitted = EventLog(ITEMS, *_batch(rng, 100_000, T0 - 30 * DAY))
    held = {way: LiveEvents(ITEMS, fold_every=fold) for way, fold in WAYS.items()}
    parts: list[tuple[npt.NDArray[Any], ...]] = []
    rows: list[dict[str, Any]] = []
    t = T0
    total = 0
    with Progress("live events", checkpoints[-1], "events") as bar:
        for checkpoint in checkpoints:
            reads: dict[str, list[float]] = {way: [] for way in WAYS}
            while total < checkpoint:
                batch = _batch(rng, PER_READ, t)
                parts.append(batch)
                total += PER_READ
                t += 1
                for way in WAYS:
                    start = time.perf_counter()
                    held[way] = held[way].add(*batch)
                    reads[way].append((time.perf_counter() - start) * 1000)
                bar.update(PER_READ)
            whole = [np.concatenate([p[k] for p in parts]) for k in range(3)]
            start = time.perf_counter()
            one = EventLog(ITEMS, *whole)  # what each read cost first: every event sorted
            rebuild_ms = (time.perf_counter() - start) * 1000
            single = LiveLog(fitted, one)
            at = int(one.end) + 1  # a request after the events, as served
            row: dict[str, Any] = {"live_events": total, "read_ms_rebuild": rebuild_ms}
            for way, events in held.items():
                assert events.count == total
                row |= {
                    f"{way}_read_ms": statistics.fmean(reads[way]),
                    f"{way}_read_ms_p50": statistics.median(reads[way]),
                    f"{way}_read_ms_max": max(reads[way]),
                    f"{way}_segments": len(events.segments),
                    f"{way}_held_mb": _held_bytes(events) / 2**20,
                    f"{way}_call_queries_ms": _queries(LiveLog(fitted, events.logs), rng, at),
                }
            row["one_log_call_queries_ms"] = _queries(single, rng, at)
            rows.append(row)
    last = rows[-1]
    return BenchReport(
        name="live-events",
        params={
            "quick": quick,
            "items": ITEMS,
            "events_per_read": PER_READ,
            "candidates": CANDIDATES,
            "checkpoints": list(checkpoints),
            "fold_every": FOLD_EVERY,
        },
        results={"checkpoints": rows},
        targets=[
            Target(
                "read ms at the largest checkpoint, rebuild / served (mean, merges included)",
                round(last["read_ms_rebuild"] / last["counts_read_ms"], 1),
                10.0,
            ),
            Target(
                "one call's log queries at the largest checkpoint, served / one log",
                round(last["counts_call_queries_ms"] / last["one_log_call_queries_ms"], 2),
                3.0,
                "<=",
            ),
            Target(
                "slowest read ms at the largest checkpoint, served",
                round(last["counts_read_ms_max"], 1),
                50.0,
                "<=",
            ),
            Target(
                "bytes held at the largest checkpoint, served / segments alone",
                round(last["counts_held_mb"] / last["segments_held_mb"], 3),
                0.1,
                "<=",
            ),
        ],
        table=rows,
    )
