"""The ranking stage in the serving path: every source's candidates, ordered by the ranker
with the features it trained on, and only where its card chose it on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import ItemTextTemplate, leave_one_out
from catalog.history import group_histories
from catalog.text import HistoryEvent
from indexer import BuildConfig, IndexBuild, IndexRoot, VerifyError
from rerank.features import Request
from rerank.gbdt import GBDTRanker, RankerConfig
from rerank.ranker_train import RankingStageArgs, Validation, train_ranking_stage
from rerank.stacking import request_time
from rerank.tables import StageTables
from retrieval.encoder import Encoder
from retrieval.index import FlatIndex
from retrieval.sequential import SequentialConfig
from retrieval.sequential_train import train_sequential
from retrieval.vectors import ItemVectors
from serving.recommender import Recommender
from tests.conftest import tiny_catalog


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("ranker")
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    ids = list(catalog.items)
    template = ItemTextTemplate()
    text = ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))
    split = leave_one_out(catalog.interactions)
    histories = group_histories(split.train)
    cfg = SequentialConfig(dim=8, max_len=4, epochs=2, batch_size=4, blend_grid=(), collab_grid=())
    tower, _ = train_sequential(text, histories, {}, cfg, progress=False)
    assert tower.item_vectors is not None
    index = FlatIndex(tower.dim).build(tower.item_vectors.ids, tower.item_vectors.matrix)
    val = split.validation
    validation = Validation(
        [
            Request(u, histories.get(u, []), request_time(HistoryEvent(i, int(t))))
            for u, i, t in zip(val.user_ids, val.item_ids, val.timestamps, strict=True)
        ],
        [{e.item_id for e in histories.get(u, [])} for u in val.user_ids],
        list(val.item_ids),
    )
    args = RankingStageArgs(
        per_user=2,
        min_history=3,
        depths={"tower": 8, "covisit": 5, "als": 5, "popular": 3},
        ranker=RankerConfig(max_rounds=10, min_data_in_leaf=2, early_stopping=5, threads=1),
    )
    trained = train_ranking_stage(
        catalog.items, histories, validation, tower, index, text, cfg, args
    )
    assert trained.choice["served"] in ("ranker", "first_stage")
    ranker = trained.ranker
    ranker.record.update(stage=args.as_dict(), choice={**trained.choice, "served": "ranker"})
    ranker.save(tmp / "ranker")

    def write_stage(vectors: ItemVectors, folder: Path) -> dict[str, object]:
        tables = StageTables.fit(
            catalog.items, group_histories(catalog.interactions), vectors, args.als
        )
        return {"files": [p.name for p in tables.save(folder)]}

    for root, stage in (("index", write_stage), ("plain", None)):
        IndexBuild(tmp / root, encoder, BuildConfig(), tower=tower, stage=stage).run(
            catalog.items, source={}, source_hash="x", progress=False
        )
    return {"tmp": tmp, "catalog": catalog, "text": text}


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
    assert out.reranked and len(out.items) == 5
    assert {"embed", "candidates", "features", "rank", "p_like"} <= set(out.timings_ms)
    assert not {i.item_id for i in out.items} & seen
    # P(like) from the stage's own head (likes and dislikes among the targets), no text model
    assert ranker.like is not None
    assert all(0.0 < (i.rerank_probability or -1) < 1.0 for i in out.items)

    # the same request through the stage and the ranker by hand gives the same order
    request = Request(user, history, rec.request_time(history))
    lists = stage.lists([request], [seen], depths={"tower": 8})
    scores = ranker.score(lists.x)
    order = np.argsort(-scores, kind="stable")[:5]
    expected = [stage.item_ids[lists.cols[o]] for o in order]
    assert [i.item_id for i in out.items] == expected
    like_cols = [lists.names.index(n) for n in ranker.like.names]
    np.testing.assert_allclose(
        [i.rerank_probability for i in out.items],
        ranker.like.probability(lists.x[order][:, like_cols]),
    )
    # candidates come from more than the tower
    present = lists.x[:, [lists.names.index(f"{s}_present") for s in ("covisit", "als")]]
    assert present.any()

    # point-wise scores of given items: the same P(like) as in the list
    scored = rec.score(user, [i.item_id for i in out.items])
    np.testing.assert_allclose(
        [s.rerank_probability for s in scored], [i.rerank_probability for i in out.items]
    )
    np.testing.assert_allclose(
        [s.retrieval_score for s in scored], [i.retrieval_score for i in out.items], atol=1e-5
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
    scores = [i.retrieval_score for i in degraded.items]
    assert scores == sorted(scores, reverse=True)

    allowed = set(expected[2:4])
    only = rec.recommend(user, k=5, candidates=8, allow=allowed)
    assert {i.item_id for i in only.items} <= allowed and only.items


def test_a_ranker_reading_text_cosines_needs_the_text_vectors(served: dict[str, object]) -> None:
    tmp = served["tmp"]
    assert isinstance(tmp, Path)
    with pytest.raises(ValueError, match=r"text_cos_last.*text_vectors="):
        Recommender(tmp / "plain", served["catalog"], ranker=GBDTRanker.load(tmp / "ranker"))  # type: ignore[arg-type]


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
    scores = [i.retrieval_score for i in out.items]
    assert scores == sorted(scores, reverse=True)  # the first stage's order
