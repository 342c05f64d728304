"""`bench latency` on a tiny home: the levers table's default row, the depth curve's quality
columns against the reference depth, and the order-agreement measure itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_latency import run
from benchmarks.contract import BenchContext
from benchmarks.latency.agreement import compare_orders, order_agreement
from benchmarks.latency.configs import CASCADE, CASCADE_DEPTHS, DEFAULT, REFERENCE_DEPTH, Config
from benchmarks.latency.harness import fast_path_quality, in_child
from benchmarks.latency.quality import cascade, cascade_quality, validation_stage
from catalog import save_catalog
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


def testorder_agreement_of_top_tens() -> None:
    scores = np.arange(20, dtype=np.float64)
    ids = list(range(20))
    assert order_agreement(scores, scores, ids, ids) == (1.0, 1.0)
    # Same ten items, reversed: full overlap, perfectly anti-correlated.
    reverse = np.where(scores >= 10, 29 - scores, scores)
    rho, overlap = order_agreement(scores, reverse, ids, ids)
    assert overlap == 1.0 and rho == pytest.approx(-1.0)
    # Disjoint top tens (another list's items): no overlap, ranks disagree.
    rho, overlap = order_agreement(scores, scores, ids, [i + 100 for i in ids])
    assert overlap == 0.0 and rho < 0


def test_the_cascade_reorders_only_the_ranker_top_n_by_p_like() -> None:
    ranked = np.array([3.0, 5.0, 4.0, 1.0, 2.0])
    top = np.argsort(-ranked, kind="stable")  # rows 1, 2, 0, 4, 3
    p_like = [0.2, 0.9, 0.5]  # of rows 1, 2, 0
    order = lambda scores: np.argsort(-scores, kind="stable").tolist()  # noqa: E731
    assert order(cascade(ranked, top, p_like, 2)) == [2, 1, 0, 4, 3]
    assert order(cascade(ranked, top, p_like, 3)) == [2, 0, 1, 4, 3]
    assert order(cascade(ranked, top, p_like, 0)) == order(ranked)


def test_compare_orders_sees_a_changed_order_and_a_changed_list() -> None:
    items = [list(range(12)), list(range(20, 32))]
    down = [float(12 - j) for j in range(12)]
    before = {"items": items, "scores": [down, down], "ndcg": [0.5, 1.0]}
    same = compare_orders(before, before)
    assert same["ndcg_ratio"] == 1.0 and same["spearman_top10"] == 1.0
    assert same["top10_overlap"] == 1.0 and same["max_abs_score_difference"] == 0.0
    # The second list's top ten reversed: the same ten items, the opposite order, and a
    # lower NDCG.
    up = [float(j) if j < 10 else -float(j) for j in range(12)]
    changed = {**before, "scores": [down, up], "ndcg": [0.5, 0.25]}
    worse = compare_orders(before, changed)
    assert worse["spearman_top10"] == pytest.approx((1.0 - 1.0) / 2)
    assert worse["top10_overlap"] == 1.0
    assert worse["ndcg_ratio"] == pytest.approx(0.75 / 1.5)
    assert worse["max_abs_score_difference"] == 12.0
    with pytest.raises(ValueError, match="different candidate lists"):
        compare_orders(before, {**before, "items": [items[0], [*items[1][:-1], 99]]})


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

    # The served fast path against the stage before the latency levers, each in its own
    # process: the levers change no score, and the per-request lists are the depth curve's.
    quality = fast_path_quality(BenchContext(home=home, redis_url=redis_url), True)
    assert quality["lists"] == 12
    assert quality["ndcg_ratio"] == 1.0 and quality["spearman_top10"] == 1.0
    assert quality["max_abs_score_difference"] == 0.0
    assert quality["ndcg@10_fast_path"] == pytest.approx(reference["ndcg@10"])


@pytest.mark.slow
def test_the_cascade_lever_on_a_tiny_home(tmp_path: Path, encoder: Encoder, redis_url: str) -> None:
    from dataclasses import replace

    from catalog import leave_one_out
    from rerank.cross_encoder.trainer import train_reranker
    from rerank.ranker.model import GBDTRanker
    from retrieval.sequential import SequentialTower
    from tests.rerank.cross_encoder.conftest import TINY

    catalog = tiny_catalog(n_items=40, n_users=12, per_user=8)
    home = tmp_path / "home"
    save_catalog(catalog, home / "datasets" / "ml-latest-small")
    models = home / "models"
    stack = build_ranked_stack(models, catalog, encoder, tower_dir=models / "tower")
    (models / "index").rename(home / "index")
    args = replace(TINY, calibrate=False)  # the head as trained: `bench cascade` reads it
    tower = SequentialTower.load(models / "tower").bind_text(stack.text)
    split = leave_one_out(catalog.interactions)
    train_reranker(
        catalog, split, stack.text, models / "reranker", args, progress=False, tower=tower
    )

    ctx = BenchContext(home=home, redis_url=redis_url)
    ranker = GBDTRanker.load(models / "ranker")
    stage, setup = validation_stage(home, redis_url, ranker)
    rows = cascade_quality(ctx, stage, setup, ranker, "torch", True)
    assert [r["cross_encoder_depth"] for r in rows] == [0, *CASCADE_DEPTHS]
    ranker_alone = rows[0]
    assert ranker_alone["lists"] == 12 and ranker_alone["pairs"] > 0
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in rows)
    assert ranker_alone["ndcg_vs_ranker"] == 1.0
    # `bench cascade` on the same home: the logit as a second pass's feature, per top N,
    # against the ranker's order and the no-text control, overall and per slice.
    from benchmarks.bench_cascade import run as run_cascade
    from rerank.ranker.cascade import DEPTHS

    cascaded = run_cascade(True, ctx)
    assert cascaded.params["lists"] == 12 and cascaded.params["pairs_scored"] > 0
    assert set(cascaded.results["depths"]) == {str(d) for d in DEPTHS}
    for entry in cascaded.results["depths"].values():
        assert entry["all"]["lists"] == 12 and entry["ms_per_call"] > 0
        assert entry["all"]["first_pass_ndcg@10"] == pytest.approx(ranker_alone["ndcg@10"])
    assert cascaded.table and {r["slice"] for r in cascaded.table} >= {"all"}
    # The served path with the ranker's top N through the cross-encoder, timed per N.
    users = sorted(set(catalog.interactions.user_ids.tolist()))[:3]
    timed = in_child(Config(CASCADE, reranker="torch", cascade=True), home, users, 1)
    assert set(timed) == {str(n) for n in CASCADE_DEPTHS}
    assert all(row["calls"] == 3 and row["p_like_p50_ms"] > 0 for row in timed.values())
    # A fused head that gives the text no weight has no logit to read: a clear error.
    from safetensors.numpy import load_file, save_file

    head_file = models / "reranker" / "head.safetensors"
    head = load_file(str(head_file))
    head["head.weight"][:] = 0.0
    save_file(head, str(head_file))
    with pytest.raises(ValueError, match="--no-calibrate"):
        run_cascade(True, ctx)
