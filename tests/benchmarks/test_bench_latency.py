"""`bench latency` on a tiny home: the levers table's default row, the depth curve's quality
columns against the reference depth, and the order-agreement measure itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_latency import DEFAULT, REFERENCE_DEPTH, _order_agreement, run
from benchmarks.contract import BenchContext
from catalog import save_catalog
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


def test_order_agreement_of_top_tens() -> None:
    scores = np.arange(20, dtype=np.float64)
    ids = list(range(20))
    assert _order_agreement(scores, scores, ids, ids) == (1.0, 1.0)
    # Same ten items, reversed: full overlap, perfectly anti-correlated.
    reverse = np.where(scores >= 10, 29 - scores, scores)
    rho, overlap = _order_agreement(scores, reverse, ids, ids)
    assert overlap == 1.0 and rho == pytest.approx(-1.0)
    # Disjoint top tens (another list's items): no overlap, ranks disagree.
    rho, overlap = _order_agreement(scores, scores, ids, [i + 100 for i in ids])
    assert overlap == 0.0 and rho < 0


@pytest.mark.slow
def test_the_depth_curve_and_the_default_row_on_a_tiny_home(
    tmp_path: Path, encoder: Encoder, redis_url: str
) -> None:
    catalog = tiny_catalog(n_items=40, n_users=12, per_user=8)
    home = tmp_path / "home"
    save_catalog(catalog, home / "datasets" / "ml-latest-small")
    build_ranked_stack(home / "models", catalog, encoder, tower_dir=home / "models" / "tower")
    (home / "models" / "index").rename(home / "index")

    report = run(True, BenchContext(home=home, redis_url=redis_url))
    levers = report.results["levers"]
    assert len(levers) == 3 and levers[-1]["configuration"] == DEFAULT  # no reranker here
    default = levers[-1]
    assert default["calls"] == 60 and default["p50_ms"] <= default["p95_ms"] <= default["p99_ms"]
    assert {"embed_p95_ms", "candidates_p95_ms", "features_p95_ms", "rank_p95_ms"} <= set(default)
    curve = {r["depth"]: r for r in report.results["depth"]}
    reference = curve[REFERENCE_DEPTH]
    assert reference["lists"] == 12
    assert reference["ndcg_vs_reference"] == 1.0
    assert reference["spearman_top10_vs_reference"] == 1.0
    assert reference["top10_overlap_vs_reference"] == 1.0
    # 40 items: from depth 50 on the tower proposes every unseen item, the same lists.
    assert curve[200]["ndcg@10"] == reference["ndcg@10"]
    assert curve[200]["spearman_top10_vs_reference"] == 1.0
    assert curve[10]["mean_candidates"] < reference["mean_candidates"]
    assert curve[200]["p50_ms"] > 0 and curve[10]["calls"] == 60  # timed in the default's process
    # Depths that keep both quality bars: 50 (the same lists), so the chosen depth is no more.
    assert report.results["chosen_depth"] <= 50
