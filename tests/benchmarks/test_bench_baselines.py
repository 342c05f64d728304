"""`duorank bench baselines`: every baseline's grid, cost and test figure, on a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from benchmarks.baselines.grids import BASELINES, baseline_grids
from duorank.cli import cli


def _movielens(root: Path, n_users: int = 30, n_items: int = 40, per_user: int = 12) -> Path:
    """A MovieLens-layout folder: users walk overlapping runs of the catalog."""
    root.mkdir()
    rng = np.random.default_rng(0)
    movies = ["movieId,title,genres"] + [
        f"{i},Film {i} (1999),Drama" for i in range(1, n_items + 1)
    ]
    (root / "movies.csv").write_text("\n".join(movies) + "\n")
    rows = ["userId,movieId,rating,timestamp"]
    for user in range(1, n_users + 1):
        start = int(rng.integers(0, n_items))
        for k in range(per_user):
            rows.append(f"{user},{(start + k) % n_items + 1},4.0,{1000 + 10 * k}")
    (root / "ratings.csv").write_text("\n".join(rows) + "\n")
    return root


def test_bench_baselines_reports_each_baselines_grid_and_cost(tmp_path: Path) -> None:
    data = _movielens(tmp_path / "ml")
    out = tmp_path / "baselines.json"
    result = CliRunner().invoke(
        cli,
        ["bench", "baselines", "--quick", "--data", str(data), "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    tuned = [b for b in BASELINES if b != "popularity"]
    assert set(record["results"]) == set(tuned)
    grids = baseline_grids(quick=True, seed=0)
    for name in tuned:
        r = record["results"][name]
        assert len(r["grid"]) >= 1 and r["tune_seconds"] > 0 and r["refit_seconds"] > 0
        assert set(grids[name].tuned) <= set(r["chosen"])
        assert 0.0 <= r["test"]["ndcg@10"] <= r["test"]["recall@10"] <= 1.0
        assert name in result.output  # a row of the printed table
    sasrec = record["results"]["sasrec"]
    point = sasrec["grid"][0]  # the refit trains for the epochs validation chose
    assert sasrec["chosen"]["epochs"] == point.get("refit_params", point["params"])["epochs"]
    assert 1 <= sasrec["chosen"]["epochs"] <= grids["sasrec"].start["epochs"]
    assert record["targets"][0]["name"].startswith("SASRec grid + refit minutes")
