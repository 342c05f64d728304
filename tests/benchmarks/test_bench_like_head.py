"""`bench like-head` on a tiny home: every head configuration fitted on the stacked targets and
read on the validation events and over user folds, the served one last."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_like_head import _configurations, run
from benchmarks.contract import BenchContext
from catalog import save_catalog
from rerank.ranker.features import FEATURE_GROUPS
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


def test_the_configurations_differ_only_in_taste_and_trees() -> None:
    names = ["retrieval_score", "item_mean_rating", *FEATURE_GROUPS["taste"]]
    rows = _configurations(names)
    assert list(rows.values())[-1] == (names, True)  # the served head: every feature, own trees
    assert rows["without taste, ranker's trees"] == (["retrieval_score", "item_mean_rating"], False)
    vectors = rows["taste without text and tower vectors, head's trees"][0]
    assert "text_rating" not in vectors and "genre_rating" in vectors


@pytest.mark.slow
def test_like_head_on_a_tiny_home(tmp_path: Path, encoder: Encoder, redis_url: str) -> None:
    from catalog import Catalog, Interactions

    tiny = tiny_catalog(n_items=40, n_users=12, per_user=14)
    assert isinstance(tiny, Catalog)
    inter = tiny.interactions  # every other user likes their validation (next to last) event
    ratings = [
        (2.0 if int(u[1:]) % 2 else 5.0) if n % 14 == 12 else r
        for n, (u, r) in enumerate(zip(inter.user_ids, inter.ratings, strict=True))
    ]
    catalog = Catalog(
        tiny.items,
        tiny.users,
        Interactions(inter.user_ids, inter.item_ids, inter.timestamps, ratings),
        source=tiny.source,
    )
    home = tmp_path / "home"
    save_catalog(catalog, home / "datasets" / "ml-latest-small")
    build_ranked_stack(home / "models", catalog, encoder, tower_dir=home / "models" / "tower")

    report = run(True, BenchContext(home=home, redis_url=redis_url))
    assert report.params["stacked_rows"] == 12 * 5 and report.params["validation_events"] == 12
    rows = report.results["rows"]
    assert [r["head"] for r in rows] == list(_configurations(list(FEATURE_GROUPS["taste"])))
    assert all(
        0.0 <= r["validation_auc"] <= 1.0 and 0.0 <= r["user_folds_auc"] <= 1.0 for r in rows
    )
    assert rows[0]["features"] + len(FEATURE_GROUPS["taste"]) == rows[-1]["features"]
    assert rows[0]["minus_first_ci95"] == "(reference)" and ".." in rows[-1]["minus_first_ci95"]
    assert len(report.targets) == 2
