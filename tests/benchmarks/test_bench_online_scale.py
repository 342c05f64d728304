"""`bench online-scale --quick` end to end: the store at two sizes and, over a served home, two
`serve --user-store` worker processes per size whose memory is measured after the load."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_online_scale import Served, run
from benchmarks.contract import BenchContext
from catalog import Catalog
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


def _served_home(base: Path, encoder: Encoder) -> Path:
    """A home laid out as the quickstart leaves it: dataset, index built with the ranker, and
    the ranker."""
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    assert isinstance(catalog, Catalog)
    build_ranked_stack(base, catalog, encoder)
    (base / "models").mkdir()
    (base / "ranker").rename(base / "models" / "ranker")
    (base / "datasets").mkdir()
    (base / "data").rename(base / "datasets" / "ml-latest-small")
    return base


def test_a_home_without_a_ranker_serves_nothing(tmp_path: Path) -> None:
    assert Served.find(tmp_path, "redis://127.0.0.1:6379/0") is None


def test_quick_run_serves_the_synthetic_users_from_the_store(
    tmp_path: Path, encoder: Encoder
) -> None:
    home = _served_home(tmp_path / "home", encoder)
    served = Served.find(home, "unix:///nowhere")
    assert served is not None and sorted(served.items.tolist()) == sorted(str(i) for i in range(30))
    report = run(True, BenchContext(home=home))
    small, large = report.results["sizes"]
    for row in (small, large):
        assert row["serve_errors"] == 0
        assert len(row["rss_mb_by_process"]) >= 3  # the supervisor and both workers
        assert row["rss_mb_per_worker"] == max(row["rss_mb_by_process"][1:]) > 50
        assert row["serve_p50_ms_1"] > 0 and row["serve_rps_16"] > 0
    names = {t.name for t in report.targets}
    assert "serving RSS per worker, large / small size (flat in users)" in names
    assert report.params["items"] == 30
