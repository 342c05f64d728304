"""`bench live-events --quick`: both ways of holding a worker's live events, at two sizes."""

from __future__ import annotations

from benchmarks.contract import BenchContext
from benchmarks.registry import run_benchmark


def test_quick_run_times_both_ways_at_each_checkpoint() -> None:
    report = run_benchmark("live-events", True, BenchContext())
    rows = report.results["checkpoints"]
    assert [r["live_events"] for r in rows] == [10_000, 100_000]
    for row in rows:
        assert 1 <= row["segments"] <= 17  # about log2 of the reads
        assert row["read_ms_segments_max"] >= row["read_ms_segments_p50"] > 0
        assert row["read_ms_rebuild"] > 0 and row["call_queries_ms_one_log"] > 0
    assert {t.name for t in report.targets} == {
        "read ms at the largest checkpoint, rebuild / segments (mean, merges included)",
        "one call's log queries, segments / one log",
    }
