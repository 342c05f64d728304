"""The trained tower as the serving first stage: published inside the index version, used to
embed users, and the reranker's retrieval feature computed from it as in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, ItemTextTemplate, leave_one_out
from catalog.history import group_histories
from indexer import BuildConfig, IndexBuild, IndexRoot, VerifyError
from rerank import Reranker
from rerank.cross_encoder.trainer import train_reranker
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from retrieval.sequential import SequentialConfig, SequentialTower
from retrieval.sequential_train import train_sequential
from retrieval.towers import UserState
from retrieval.vectors import ItemVectors
from serving.recommender import Recommender
from tests.conftest import tiny_catalog


def test_index_version_carries_the_tower_and_serving_uses_it(
    tmp_path: Path, encoder: Encoder
) -> None:
    catalog = tiny_catalog(n_items=30, n_users=10, per_user=8)
    assert isinstance(catalog, Catalog)
    template = ItemTextTemplate()
    ids = list(catalog.items)
    text = ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))
    split = leave_one_out(catalog.interactions)
    cfg = SequentialConfig(  # with the collaborative block (ALS fitted at its settings)
        dim=8, max_len=4, epochs=2, batch_size=4, blend_grid=(), collab_weight=0.2
    )
    trained, _ = train_sequential(text, group_histories(split.train), {}, cfg, progress=False)
    tower = trained.with_blend(0.3)
    manifest = IndexBuild(tmp_path / "index", encoder, BuildConfig(), tower=tower).run(
        catalog.items, source={}, source_hash="x", progress=False
    )
    assert manifest["tower"]["name"] == "sequential"
    assert manifest["dims"] == 8 + 384 + cfg.collab_factors
    assert {"tower.json", "model.safetensors"} <= set(manifest["files"])

    tower.bind(ItemVectors(ids, tower.item_transform(ids, text.matrix)))
    train_reranker(
        catalog,
        split,
        text,
        tmp_path / "rr",
        RerankerTrainArgs(max_steps=1, batch_size=8, targets_per_user=1, val_users=3),
        progress=False,
        tower=tower,
    )
    reranker = Reranker(tmp_path / "rr")
    assert reranker.config.retrieval == "sequential"

    rec = Recommender(tmp_path / "index", catalog, reranker)
    served = rec._loaded.tower
    assert isinstance(served, SequentialTower) and served.cfg.cold_blend == pytest.approx(0.3)
    assert served.cfg.collab_weight == pytest.approx(0.2) and served.collab is not None
    user = next(iter(rec.histories))
    out = rec.recommend(user, k=5, candidates=10)
    assert out.served_by == "cross-encoder" and len(out.items) == 5
    vector = tower.embed([UserState(user, {}, rec.histories[user])])[0]
    assert tower.item_vectors is not None
    for item in out.items:  # the retrieval score is the trained tower's blended score
        expected = tower.item_vectors.matrix[tower.item_vectors.rows([item.item_id])[0]] @ vector
        assert item.first_stage_score == pytest.approx(float(expected), abs=1e-4)
    feats = rec._loaded.features.features(vector, [i.item_id for i in out.items])
    np.testing.assert_allclose(feats[:, 0], [i.first_stage_score for i in out.items], atol=1e-4)

    weights = IndexRoot(tmp_path / "index").version_dir(manifest["version"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # a damaged tower is never served
    with pytest.raises(VerifyError, match=r"model\.safetensors"):
        IndexRoot(tmp_path / "index").verify(manifest["version"])
