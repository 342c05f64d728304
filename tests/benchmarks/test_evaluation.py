"""The offline evaluation harness and its baselines, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.evaluation import bootstrap_ci, make_fold, run_eval, write_report
from catalog import Catalog, ItemTextTemplate, leave_one_out
from catalog.history import group_histories
from rerank import Reranker
from rerank.cross_encoder.trainer import train_reranker
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder, encode_catalog
from retrieval.sequential import SequentialConfig
from retrieval.sequential_train import train_sequential
from retrieval.vectors import ItemVectors
from tests.conftest import tiny_catalog


def test_fold_data_is_built_once_in_time_order() -> None:
    """Baselines fit on ``fold.data``; one object per fold lets item-kNN's grid reuse its
    co-occurrence matrix across grid points (it is keyed by the matrix)."""
    catalog = tiny_catalog()
    assert isinstance(catalog, Catalog)
    split = leave_one_out(catalog.interactions)
    fold = make_fold("validation", catalog, split.train, split.validation, None, 0)
    assert fold.data is fold.data
    histories = group_histories(split.train)
    user = fold.users[0]
    expected = [fold.item_col[e.item_id] for e in histories[user]]
    assert fold.data.sequences[fold.user_row[user]].tolist() == expected


def test_bootstrap_interval_contains_the_mean() -> None:
    values = np.random.default_rng(0).uniform(size=500)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.1


@pytest.mark.slow
def test_run_eval_and_report(tmp_path: Path, encoder: Encoder) -> None:
    catalog = tiny_catalog(n_items=40, n_users=12, per_user=8)
    assert isinstance(catalog, Catalog)
    ids = list(catalog.items)
    template = ItemTextTemplate()
    vectors = ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))
    cfg = RerankerTrainArgs(
        max_steps=1, batch_size=8, targets_per_user=1, val_users=3, val_candidates=5, hard_pool=5
    )
    split = leave_one_out(catalog.interactions)
    tower_cfg = SequentialConfig(dim=8, epochs=2, batch_size=4)
    tower, _ = train_sequential(
        vectors, group_histories(split.train), {}, tower_cfg, progress=False
    )
    # The reranker learns from the trained tower, as in the default pipeline.
    train_reranker(catalog, split, vectors, tmp_path / "rr", cfg, progress=False, tower=tower)
    report = run_eval(
        catalog,
        item_vectors=vectors,
        encode=lambda items: encode_catalog(encoder, items),
        quick=True,
        reranker=Reranker(tmp_path / "rr"),
        retriever=encoder,  # the bundled model stands in for a fine-tuned one
        sequential=tower_cfg,
        seeds=2,
    )
    assert set(report["methods"]) == {
        "popularity",
        "als",
        "bpr",
        "itemknn",
        "ease",
        "sasrec",
        "two_tower_finetuned",
        "two_tower_trained+reranker",
        "two_tower_zero_shot",
        "two_tower_trained",
        "als+reranker",
        "ranking_stage",
    }  # the zero-shot tower is reranked only when no trained tower is evaluated
    trained = report["methods"]["two_tower_trained"]
    assert [r["seed"] for r in trained["seeds"]["runs"]] == [0, 1]
    assert trained["seeds"]["runs"][0]["ndcg@10"] == trained["ndcg@10"]
    assert trained["params"]["cold_blend"] in SequentialConfig().blend_grid
    assert trained["params"]["collab_weight"] in SequentialConfig().collab_grid
    assert not trained["params"]["collab_grid"]  # the refit keeps what validation chose
    # The headline (the pipeline) is repeated per seed with that seed's tower and features.
    pipeline = report["methods"]["two_tower_trained+reranker"]
    assert [r["seed"] for r in pipeline["seeds"]["runs"]] == [0, 1]
    assert pipeline["seeds"]["runs"][0]["ndcg@10"] == pipeline["ndcg@10"]
    assert all(len(r["ndcg@10_minus_als_ci95"]) == 2 for r in pipeline["seeds"]["runs"])
    assert all(len(r["ndcg@10_minus_best_baseline_ci95"]) == 2 for r in pipeline["seeds"]["runs"])
    # The best baseline is the strongest on test (SASRec by its seeds' mean, refit per seed).
    best = report["best_baseline"]
    sasrec = report["methods"]["sasrec"]
    assert [r["seed"] for r in sasrec["seeds"]["runs"]] == [0, 1]
    baseline_scores = {
        n: report["methods"][n]
        .get("seeds", {})
        .get("ndcg@10_mean", report["methods"][n]["ndcg@10"])
        for n in ("popularity", "als", "bpr", "itemknn", "ease", "sasrec")
    }
    assert baseline_scores[best] == max(baseline_scores.values())
    # The headline's interval: each user's NDCG@10 averaged over the seeds, minus the
    # reference's (ALS, and the best baseline of the run).
    for key, ref_ndcg in (
        ("vs_als", report["methods"]["als"]["ndcg@10"]),
        ("vs_best_baseline", baseline_scores[best]),
    ):
        for method in (trained, pipeline):
            summary = method["seeds"][key]
            mean_diff = method["seeds"]["ndcg@10_mean"] - ref_ndcg
            lo, hi = summary["ndcg@10_mean_minus_reference_ci95"]
            assert lo - 1e-9 <= mean_diff <= hi + 1e-9
            if ref_ndcg:
                ratio = method["seeds"]["ndcg@10_mean"] / ref_ndcg
                assert summary["ndcg@10_mean_vs_reference"] == pytest.approx(ratio)
    # Seed 1 refits with what seed 0 chose on validation.
    assert trained["seeds"]["protocol"].startswith("the first seed chooses")
    lo, hi = report["methods"]["popularity"]["ndcg@10_minus_als_ci95"]
    assert lo <= hi and "ndcg@10_minus_als_ci95" not in report["methods"]["als"]
    reranked = report["methods"]["als+reranker"]
    assert reranked["candidate_recall@100"] == report["methods"]["als"]["recall@100"]
    assert reranked["calibration"] and 0 <= reranked["ece"] <= 1
    for m in report["methods"].values():
        assert 0.0 <= m["gini@10"] <= 1.0 and 0.0 < m["max_item_share@10"] <= 1.0
        assert m["cold_max_item_share@10"] <= m["max_item_share@10"]
        assert 0.0 <= m["cold_slot_share@10"] <= 1.0
        assert 0.0 <= m["ndcg@10"] <= m["recall@10"] + 1e-9 <= 1.0 + 1e-9
        assert m["recall@10"] <= m["recall@100"] + 1e-9
        lo, hi = m["ndcg@10_ci95"]
        assert lo <= m["ndcg@10"] <= hi
    assert report["protocol"]["users"]["test"] == 12
    assert report["protocol"]["item_text_as_of"] is None  # given no cut-off: every tag
    arrivals = report["new_arrivals"]  # always run with the trained tower
    assert arrivals["cutoff"] and arrivals["cold_users"] >= 1
    # The ranking stage: chosen on validation against its own first stage, ablated, tested
    # per seed against the tower with the same seed.
    stage = report["ranking_stage"]
    assert stage["served"] in ("ranker", "first_stage")
    assert stage["choice"]["served"] == stage["served"]
    assert {"ranker", "without knn", "without source covisit"} <= set(stage["ablation"])
    ranking = report["methods"]["ranking_stage"]
    assert [r["seed"] for r in ranking["seeds"]["runs"]] == [0, 1]
    assert ranking["seeds"]["runs"][0]["ndcg@10"] == ranking["ndcg@10"]
    # The nightly batch protocol: every test user at the log's end, paired with the online call.
    batch = ranking["batch"]
    assert batch["request_time"] > max(
        int(t) for t in (*split.train.timestamps, *split.validation.timestamps)
    )
    lo, hi = batch["vs_online"]["ndcg@10_mean_minus_reference_ci95"]
    assert lo - 1e-9 <= batch["ndcg@10"] - ranking["ndcg@10"] <= hi + 1e-9
    vs_first = ranking["seeds"]["vs_first_stage"]
    lo, hi = vs_first["ndcg@10_mean_minus_reference_ci95"]
    diff = ranking["seeds"]["ndcg@10_mean"] - trained["seeds"]["ndcg@10_mean"]
    assert lo - 1e-9 <= diff <= hi + 1e-9
    # The cross-encoder's text beside the features ranker, on the tower's top lists.
    text = stage["text"]
    assert text["pairs"] > 0 and text["ms_per_pair"] > 0
    assert set(text["variants"]) == {
        "first stage",
        "features ranker (served)",
        "text only (cross-encoder)",
        "first stage + text",
        "features ranker + text",
    }
    assert text["variants"]["features ranker (served)"]["minus_ranker"] == 0.0
    assert all(0.0 <= v["ndcg@10"] <= 1.0 for v in text["variants"].values())
    assert len(text["fits"]["features ranker + text"]) == 2
    # the tiny catalog's events are all likes: no P(like) head, and the report says so
    assert set(report["methods"]["popularity"]) >= {"ndcg@10"}
    assert stage["ranker"]["like"].startswith("none: every training target is a like")
    assert stage["like"] == stage["ranker"]["like"]
    # The room the ranking stage has: every source's recall on validation, and the merge's.
    sources = report["candidate_sources"]
    assert set(sources["sources"]) == {"tower", "covisit", "als", "popular"}
    merged = sources["merged"]
    for n in (20, 50, 100):
        assert merged[f"recall@{n}"] >= max(m[f"recall@{n}"] for m in sources["sources"].values())
    for name, m in sources["sources"].items():
        assert m["recall@20"] <= m["recall@50"] <= m["recall@100"] <= 1.0
        assert sources["without"][name] <= merged["recall@100"]
    written = write_report(report, tmp_path / "report.json")
    assert {p.suffix for p in written} == {".json", ".md", ".png"}
    assert (tmp_path / "report-calibration.png").exists()
    assert json.loads((tmp_path / "report.json").read_text())["methods"]
    table = (tmp_path / "report.md").read_text()
    assert "| als |" in table
    # The seeds' table: both seeded methods, two seeds each, with the mean's interval.
    seeded = [line for line in table.splitlines() if line.startswith("| two_tower_trained")]
    assert sum(" | 2 | " in line for line in seeded) == 2
    assert any(line.startswith("| sasrec | 2 | ") for line in table.splitlines())
    assert f"Best baseline of the run: {best}." in table and "| Gini@10 |" in table
    assert "| covisit |" in table and "| merged (" in table
    assert "Text on validation" in table and "| text only (cross-encoder) |" in table
    assert "Served as a nightly batch (`recommend-all`" in table


def test_a_validation_grid_reports_its_progress() -> None:
    """The staged grid counts its settings (a bar on a terminal, log lines elsewhere) and ends
    with a summary; a setting met again in a later stage is counted, not refitted."""
    from benchmarks.baselines import ItemKNNScorer
    from benchmarks.evaluation.protocol import tune_staged

    catalog = tiny_catalog()
    assert isinstance(catalog, Catalog)
    split = leave_one_out(catalog.interactions)
    fold = make_fold("validation", catalog, split.train, split.validation, None, 0)
    said: list[str] = []
    stages = [{"neighbours": [2, 5]}, {"shrink": [0.0, 10.0]}]
    _, rows = tune_staged(
        ItemKNNScorer,
        {"neighbours": 2, "shrink": 0.0},
        stages,
        fold,
        progress=said.append,
        name="itemknn",
    )
    assert said[-1].startswith("itemknn: validation grid: 4 settings in ")
    assert said[-1].endswith(f"(tried {len(rows)})") and len(rows) == 3
