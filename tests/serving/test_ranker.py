"""The ranking stage in the serving path: every source's candidates, ordered by the ranker
with the features it trained on, and only where its card chose it on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog
from indexer import IndexRoot, VerifyError
from rerank.ranker.features import Request
from rerank.ranker.model import GBDTRanker
from retrieval.encoder import Encoder
from serving.explain import movement
from serving.recommender import Recommender
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("ranker")
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    assert isinstance(catalog, Catalog)
    ranked = build_ranked_stack(tmp, catalog, encoder, plain_root=tmp / "plain")
    return {"tmp": tmp, "catalog": catalog, "text": ranked.text}


def test_the_ranker_orders_every_sources_candidates(served: dict[str, object]) -> None:
    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    ranker = GBDTRanker.load(tmp / "ranker")
    rec = Recommender(tmp / "index", served["catalog"], ranker=ranker)  # type: ignore[arg-type]
    assert rec._loaded.manifest["stage"]["files"] == ["stage.npz", "stage.json"]
    stage = rec._loaded.stage
    assert stage is not None and [s.name for s in stage.sources] == [
        "tower",
        "covisit",
        "als",
        "popular",
    ]
    user = sorted(rec.histories)[0]
    history = rec.histories[user]
    seen = {e.item_id for e in history}
    out = rec.recommend(user, k=5, candidates=8)
    assert out.served_by == "ranking stage" and len(out.items) == 5
    assert out.served_because.startswith("it beat the first stage's order on validation")
    assert [i.ranking_score for i in out.items] == sorted(
        (i.ranking_score for i in out.items), reverse=True
    )  # the ranking score is what sorts the list
    assert {"embed", "candidates", "features", "rank", "p_like"} <= set(out.timings_ms)
    assert not {i.item_id for i in out.items} & seen
    # P(like) from the stage's own head (likes and dislikes among the targets), no text model
    assert ranker.like is not None
    assert all(0.0 < (i.p_like or -1) < 1.0 for i in out.items)

    # the same request through the stage and the ranker by hand gives the same order
    request = Request(user, history, rec.request_time(history))
    lists = stage.lists([request], [seen], depths={"tower": 8})
    scores = ranker.score(lists.x)
    order = np.argsort(-scores, kind="stable")[:5]
    expected = [stage.item_ids[lists.cols[o]] for o in order]
    assert [i.item_id for i in out.items] == expected
    like_cols = [lists.names.index(n) for n in ranker.like.names]
    np.testing.assert_allclose(
        [i.p_like for i in out.items],
        ranker.like.probability(lists.x[order][:, like_cols]),
    )
    # candidates come from more than the tower
    present = lists.x[:, [lists.names.index(f"{s}_present") for s in ("covisit", "als")]]
    assert present.any()

    # point-wise scores of given items: the same P(like) as in the list
    scored = rec.score(user, [i.item_id for i in out.items])
    np.testing.assert_allclose([s.p_like for s in scored], [i.p_like for i in out.items])
    np.testing.assert_allclose(
        [s.first_stage_score for s in scored], [i.first_stage_score for i in out.items], atol=1e-5
    )
    # the tables the version carries are the ones fitted from the catalog at load
    fitted = Recommender(
        tmp / "plain",
        served["catalog"],  # type: ignore[arg-type]
        ranker=ranker,
        text_vectors=lambda: served["text"],  # type: ignore[arg-type,return-value]
    )
    assert fitted._loaded.manifest["stage"] is None
    assert [i.item_id for i in fitted.recommend(user, k=5, candidates=8).items] == expected

    # a broken ranking stage degrades to the tower's order, flagged, never an error
    broken = Recommender(tmp / "index", served["catalog"], ranker=ranker)  # type: ignore[arg-type]
    broken.ranker = GBDTRanker(None, ranker.names, ranker.scale, ranker.config, ranker.record)
    degraded = broken.recommend(user, k=5, candidates=8)
    assert degraded.fallback == "rank_failed" and len(degraded.items) == 5
    scores = [i.first_stage_score for i in degraded.items]
    assert scores == sorted(scores, reverse=True)

    allowed = set(expected[2:4])
    only = rec.recommend(user, k=5, candidates=8, allow=allowed)
    assert {i.item_id for i in only.items} <= allowed and only.items


def test_a_ranker_reading_text_cosines_needs_the_text_vectors(served: dict[str, object]) -> None:
    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    with pytest.raises(ValueError, match=r"text_cos_last.*text_rating.*text_vectors="):
        Recommender(tmp / "plain", served["catalog"], ranker=GBDTRanker.load(tmp / "ranker"))  # type: ignore[arg-type]
    # reading the text through the user's ratings alone is reading the text too
    ranker = GBDTRanker.load(tmp / "ranker")
    ranker.names = tuple(n for n in ranker.names if not n.startswith("text_cos"))
    with pytest.raises(ValueError, match=r"\['text_rating'\].*text_vectors="):
        Recommender(tmp / "plain", served["catalog"], ranker=ranker)  # type: ignore[arg-type]


def test_damaged_stage_tables_are_never_served(served: dict[str, object]) -> None:
    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    root = IndexRoot(tmp / "index")
    version = root.current()
    assert version is not None
    npz = root.version_dir(version) / "stage.npz"
    original = npz.read_bytes()
    try:
        npz.write_bytes(original[:-16])
        with pytest.raises(VerifyError, match=r"stage\.npz"):
            Recommender(tmp / "index", served["catalog"], ranker=GBDTRanker.load(tmp / "ranker"))  # type: ignore[arg-type]
    finally:
        npz.write_bytes(original)


def test_a_ranker_its_card_did_not_choose_is_not_served(served: dict[str, object]) -> None:
    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    ranker = GBDTRanker.load(tmp / "ranker")
    ranker.record["choice"]["served"] = "first_stage"
    rec = Recommender(tmp / "index", served["catalog"], ranker=ranker)  # type: ignore[arg-type]
    assert rec.ranker is None and rec._loaded.stage is None
    user = sorted(rec.histories)[0]
    out = rec.recommend(user, k=5, candidates=8)
    scores = [i.first_stage_score for i in out.items]
    assert scores == sorted(scores, reverse=True)  # the first stage's order


def test_explanations_name_the_sources_the_history_and_the_features(
    served: dict[str, object],
) -> None:
    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    ranker = GBDTRanker.load(tmp / "ranker")
    rec = Recommender(tmp / "index", served["catalog"], ranker=ranker)  # type: ignore[arg-type]
    stage = rec._loaded.stage
    assert stage is not None
    user = sorted(rec.histories)[0]
    history = rec.histories[user]
    plain = rec.recommend(user, k=5, candidates=8)
    assert all(i.explanation is None for i in plain.items) and "explain" not in plain.timings_ms
    out = rec.recommend(user, k=5, candidates=8, explain=True)
    assert [i.item_id for i in out.items] == [i.item_id for i in plain.items]
    assert "explain" in out.timings_ms

    # the rows the ranker scored, by hand
    seen = {e.item_id for e in history}
    request = Request(user, history, rec.request_time(history))
    lists = stage.lists([request], [seen], depths={"tower": 8})
    ids = [stage.item_ids[c] for c in lists.cols]
    retrieval = lists.column("retrieval_score")
    by_first = [ids[o] for o in np.argsort(-retrieval, kind="stable")]
    effects = ranker.contributions(lists.x)
    # TreeSHAP is additive: the contributions and the trees' mean give the trees' output
    trees = ranker.score(lists.x) - ranker.scale * retrieval
    bias = ranker.booster.predict(lists.x, pred_contrib=True)[:, -1]
    np.testing.assert_allclose(effects.sum(axis=1) + bias, trees, rtol=1e-4, atol=1e-6)

    vectors = rec._loaded.index.reconstruct(np.arange(len(rec._loaded.index)))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    position = {i: n for n, i in enumerate(rec._loaded.index.ids)}
    recent = []
    for e in sorted(history, key=lambda e: -e.timestamp):
        if e.item_id not in recent:
            recent.append(e.item_id)
    served = [i.item_id for i in out.items]
    pulls = np.array(
        [[float(vectors[position[h]] @ vectors[position[i]]) for h in recent] for i in served]
    )
    gaps = pulls - pulls.mean(axis=0)
    lifts = gaps / np.maximum(pulls.std(axis=0), 1e-6)
    enough = gaps >= np.maximum(pulls.std(axis=0), 0.05)
    for n_item, item in enumerate(out.items):
        why = item.explanation
        assert why is not None
        row = ids.index(item.item_id)
        present = [
            s for s in ("tower", "covisit", "als", "popular") if lists.column(f"{s}_present")[row]
        ]
        assert why.sources == present and present
        assert why.first_stage_rank == by_first.index(item.item_id) + 1
        assert item.ranking_score == pytest.approx(float(ranker.score(lists.x[row : row + 1])[0]))
        # the features: the largest contributions of this row, signed, in order
        top = np.argsort(-np.abs(effects[row]), kind="stable")[: len(why.features)]
        assert [f.feature for f in why.features] == [ranker.names[j] for j in top]
        for f, j in zip(why.features, top, strict=True):
            assert f.effect == pytest.approx(effects[row, j])
        # because: the recent history items that pull this item at least one standard
        # deviation more than they pull the served list on average, most lifted first
        sims = {h: float(vectors[position[h]] @ vectors[position[item.item_id]]) for h in recent}
        lifted = {h: float(lifts[n_item, j]) for j, h in enumerate(recent)}
        strong = {h for j, h in enumerate(recent) if enough[n_item, j] and sims[h] > 0}
        expected = sorted(strong, key=lambda h: -lifted[h])[:3]
        assert [b.item_id for b in why.because] == expected
        total = sum(max(s, 0.0) for s in sims.values())
        for b in why.because:
            assert b.share == pytest.approx(sims[b.item_id] / total, rel=1e-4)
            assert b.lift == pytest.approx(lifted[b.item_id], rel=1e-4) and b.lift >= 1.0
        # reasons: phrases, not feature names, with strengths that share the effect given
        assert all("_" not in r.text for r in why.reasons)
        assert not why.reasons or 0.99 < sum(r.strength for r in why.reasons) <= 1.0 + 1e-9
        first = why.first_stage_rank
        assert why.movement == movement(first, n_item + 1)

    # without the second stage: the first stage's order, still explained
    first = rec.recommend(user, k=5, candidates=8, explain=True, second_stage=False)
    assert first.served_by == "first stage"
    scores = [i.first_stage_score for i in first.items]
    assert scores == sorted(scores, reverse=True)
    whys = [i.explanation for i in first.items]
    assert all(w is not None and w.sources == ["tower"] for w in whys)
    assert [w.first_stage_rank for w in whys if w] == [1, 2, 3, 4, 5]


def test_one_request_object_carries_a_call_and_checks_itself(served: dict[str, object]) -> None:
    from serving.recommender import RecommendRequest

    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    rec = Recommender(tmp / "index", served["catalog"], ranker=GBDTRanker.load(tmp / "ranker"))  # type: ignore[arg-type]
    user = sorted(rec.histories)[0]
    by_keywords = rec.recommend(user, k=4, candidates=8, allow=None)
    by_request = rec.answer(RecommendRequest(user, k=4, candidates=8))
    assert [i.item_id for i in by_request.items] == [i.item_id for i in by_keywords.items]
    assert by_request.served_by == by_keywords.served_by == "ranking stage"
    with pytest.raises(ValueError, match="must not exceed"):
        RecommendRequest(user, k=9, candidates=8)
    with pytest.raises(ValueError, match=">= 1"):
        RecommendRequest(user, k=0)


def test_a_ranker_trained_on_the_previous_tables_is_served_with_a_warning(
    served: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    from rerank.ranker.tables import FORMAT, OLD_FORMAT

    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    ranker = GBDTRanker.load(tmp / "ranker")
    assert ranker.record["stage"]["tables"] == FORMAT  # what training records
    with caplog.at_level("WARNING", logger="serving.versions"):
        Recommender(tmp / "index", served["catalog"], ranker=ranker)  # type: ignore[arg-type]
    assert "retrained" not in caplog.text
    del ranker.record["stage"]["tables"]  # a card written before the format was recorded
    with caplog.at_level("WARNING", logger="serving.versions"):
        rec = Recommender(tmp / "index", served["catalog"], ranker=ranker)  # type: ignore[arg-type]
    assert f"format {OLD_FORMAT}" in caplog.text and "retrained" in caplog.text
    assert rec.recommend(sorted(rec.histories)[0], k=3, candidates=8).served_by == "ranking stage"
