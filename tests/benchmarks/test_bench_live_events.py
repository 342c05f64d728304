"""`bench live-events --quick`: the ways of holding a worker's live events, at two sizes."""

from __future__ import annotations

from benchmarks.contract import BenchContext
from benchmarks.registry import run_benchmark


def test_quick_run_times_every_way_at_each_checkpoint() -> None:
    report = run_benchmark("live-events", True, BenchContext())
    rows = report.results["checkpoints"]
    assert [r["live_events"] for r in rows] == [10_000, 100_000]
    for row in rows:
        assert 1 <= row["segments_segments"] <= 17  # about log2 of the reads
        for way in ("counts", "segments"):
            assert row[f"{way}_read_ms_max"] >= row[f"{way}_read_ms_p50"] > 0
            assert row[f"{way}_held_mb"] > 0 and row[f"{way}_call_queries_ms"] > 0
        assert row["read_ms_rebuild"] > 0 and row["one_log_call_queries_ms"] > 0
    small, large = rows
    assert small["counts_segments"] == small["segments_segments"]  # under the fold size: the same
    # past it, the served way holds counts and the newest few segments: fewer bytes, flat
    assert large["counts_held_mb"] < large["segments_held_mb"] / 5
    assert large["counts_segments"] <= small["counts_segments"] + 2
    assert len(report.targets) == 4
