"""`bench scale-encode` writes its record after every row, so a stopped run keeps its rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench_scale_encode
from benchmarks.contract import BenchContext


def test_the_record_is_written_after_each_row_and_the_figures_follow(tmp_path: Path) -> None:
    out = tmp_path / "scale-encode.json"
    seen: list[dict[str, Any]] = []
    took = {("ray", 2): 10.0, ("local", 1): 8.0, ("ray", 1): 16.0}

    def encode(engine: str, workers: int, items: dict[str, Any], encoder: Any) -> float:
        if out.exists():
            seen.append(json.loads(out.read_text()))
        assert len(items) == 2_000
        return took[engine, workers]

    report = bench_scale_encode.run(True, BenchContext(home=tmp_path, output=out), encode)
    # Before the 2nd and 3rd rows the file held the rows finished so far, marked incomplete.
    assert [len(r["results"]["encode"]) for r in seen] == [1, 2]
    assert [r["params"]["complete"] for r in seen] == [False, False]
    # The efficiency needs both Ray rows: absent after the first, there (with its target) after
    # the second, before the local row has run; the ratios to local wait for that row.
    assert "ray_2_vs_1_efficiency" not in seen[0]["results"] and seen[0]["targets"] == []
    assert seen[1]["results"]["ray_2_vs_1_efficiency"] == pytest.approx(16 / 10 / 2)
    assert len(seen[1]["targets"]) == 1
    assert all("ray_2_vs_local" not in r["results"] for r in seen)
    final = json.loads(out.read_text())
    assert final["params"]["complete"] is True
    assert [(r["engine"], r["workers"]) for r in final["results"]["encode"]] == list(
        bench_scale_encode.CONFIGS
    )
    assert final["results"]["ray_2_vs_local"] == pytest.approx(8 / 10)
    assert final["results"]["ray_1_vs_local"] == pytest.approx(8 / 16)
    assert final["results"]["ray_2_vs_1_efficiency"] == pytest.approx(16 / 10 / 2)
    assert [r["items_per_s"] for r in final["results"]["encode"]] == [200.0, 125.0, 250.0]
    assert report.targets[0].measured == pytest.approx(0.8) and report.targets[0].met
