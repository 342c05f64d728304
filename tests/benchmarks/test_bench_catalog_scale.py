"""`bench catalog-scale` end to end on two tiny synthetic catalogs: the home's tower and ranker
built over each with `index build` (text vectors read from the cache), then served by two
`serve --user-store` workers whose latency and memory are measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_catalog_scale
from benchmarks.bench_catalog_scale import EVENTS_PER_USER, run, synthetic_catalog
from benchmarks.contract import BenchContext
from catalog import Catalog
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


def test_the_synthetic_catalog_is_seeded_and_skewed() -> None:
    one, again = synthetic_catalog(2_000, seed=3), synthetic_catalog(2_000, seed=3)
    assert one.interactions == again.interactions
    assert len(one.users) == 200 and len(one.interactions) == 200 * EVENTS_PER_USER
    counts = np.sort(np.unique(one.interactions.item_ids, return_counts=True)[1])[::-1]
    assert counts[0] > 20 * np.median(counts)  # a head, so neighbour rows fill
    assert all(1 <= len(item.genres) <= 3 for item in one.items.values())


def test_a_home_without_a_trained_tower_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="quickstart"):
        run(True, BenchContext(home=tmp_path))


def test_quick_run_builds_and_serves_each_catalog(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    assert isinstance(catalog, Catalog)
    build_ranked_stack(home, catalog, encoder, tower_dir=home / "models" / "tower")
    (home / "ranker").rename(home / "models" / "ranker")
    monkeypatch.setattr(bench_catalog_scale, "QUICK_SIZES", ((120, "flat"), (400, "hnsw")))
    report = run(True, BenchContext(home=home))
    rows = report.results["sizes"]
    assert [(r["items"], r["index_type"]) for r in rows] == [(120, "flat"), (400, "hnsw")]
    for row in rows:
        # every text vector came from the cache the bench filled: the model encoded nothing
        assert row["cached_vectors"] == row["items"] == row["build_cache_hits"]
        assert row["build_encoded"] == 0
        assert {"stage.npz", "manifest.json"} <= set(row["version_files_mb"])
        assert row["serve_errors"] == 0 and row["serve_p95_ms_1"] > 0
        assert len(row["rss_mb_by_process"]) >= 3  # the supervisor and both workers
        assert row["rss_mb_per_worker"] == max(row["rss_mb_by_process"][1:]) > 50
        assert 0 < row["private_mb_per_worker"] <= row["rss_mb_per_worker"]
    assert {t.name for t in report.targets} >= {"serving errors, every size"}
