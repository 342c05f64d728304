"""The trained sequential tower over cached item vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, leave_one_out
from catalog.history import group_histories
from catalog.text import HistoryEvent
from retrieval.sequential import SequentialConfig, SequentialTower, train_sequential
from retrieval.towers import MeanItemsTower, UserState
from retrieval.vectors import ItemVectors, normalize
from tests.conftest import tiny_catalog


def _setup() -> tuple[ItemVectors, dict, dict]:
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=8)
    assert isinstance(catalog, Catalog)
    rng = np.random.default_rng(0)
    ids = list(catalog.items)
    vectors = ItemVectors(ids, normalize(rng.normal(size=(len(ids), 16)).astype(np.float32)))
    split = leave_one_out(catalog.interactions)
    train = group_histories(split.train)
    val = dict(
        zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
    )
    return vectors, train, val


CFG = SequentialConfig(dim=8, max_len=4, epochs=3, batch_size=4, patience=3, blend_grid=())


def test_trains_and_embeds_unit_vectors() -> None:
    vectors, train, val = _setup()
    tower, card = train_sequential(vectors, train, val, CFG, progress=False)
    assert len(card["epochs"]) == 3 and card["epochs"][-1]["loss"] > 0
    assert 1 <= card["best_epoch"] <= 3
    assert tower.item_vectors is not None and tower.item_vectors.dim == 8
    out = tower.embed([UserState("u0", {}, train["u0"]), UserState("cold")])
    assert out.shape == (2, 8)
    assert np.linalg.norm(out[0]) == pytest.approx(1.0, abs=1e-5) and not out[1].any()


def test_new_items_get_a_vector_from_text_alone() -> None:
    vectors, train, val = _setup()
    tower, _ = train_sequential(vectors, train, val, CFG, progress=False)
    new = tower.item_transform(["brand-new"], vectors.matrix[:1])
    known_text_only = tower.item_transform(["brand-new"], vectors.matrix[:1])
    np.testing.assert_allclose(new, known_text_only)
    with_id = tower.item_transform([vectors.ids[0]], vectors.matrix[:1])
    assert np.linalg.norm(new) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(new, with_id)  # the ID vector moves a trained item


def test_refit_without_validation_runs_fixed_epochs() -> None:
    vectors, train, _ = _setup()
    _, card = train_sequential(vectors, train, {}, CFG, progress=False)
    assert [e["epoch"] for e in card["epochs"]] == [1, 2, 3] and card["best_epoch"] == 3


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    vectors, train, val = _setup()
    tower, _ = train_sequential(vectors, train, val, CFG, progress=False)
    tower.save(tmp_path / "tower")
    loaded = SequentialTower.load(tmp_path / "tower")
    np.testing.assert_allclose(
        loaded.item_transform(vectors.ids, vectors.matrix),
        tower.item_transform(vectors.ids, vectors.matrix),
        atol=1e-6,
    )
    assert tower.item_vectors is not None
    loaded.bind(tower.item_vectors)
    user = UserState("u", {}, [HistoryEvent(vectors.ids[1], 1), HistoryEvent(vectors.ids[2], 2)])
    np.testing.assert_allclose(loaded.embed([user]), tower.embed([user]), atol=1e-6)
    with pytest.raises(ValueError, match="bind"):
        SequentialTower.load(tmp_path / "tower").embed([user])


def test_cold_blend_scores_learned_plus_weighted_text_similarity() -> None:
    vectors, train, val = _setup()
    plain, _ = train_sequential(vectors, train, val, CFG, progress=False)
    tower = plain.with_blend(0.5)
    ids = [*vectors.ids, "brand-new"]
    text = np.vstack([vectors.matrix, vectors.matrix[:1]])
    indexed = tower.item_transform(ids, text)
    assert indexed.shape == (len(ids), 8 + 16)
    tower.bind(ItemVectors(ids, indexed))
    user = UserState("u0", {}, train["u0"])
    score = tower.embed([user])[0] @ indexed.T
    plain.bind(ItemVectors(ids, plain.item_transform(ids, text)))
    learned = plain.embed([user])[0] @ plain.item_vectors.matrix.T  # type: ignore[union-attr]
    pooled = MeanItemsTower(vectors, n_recent=5).embed([user])[0]  # the zero-shot user vector
    assert pooled.any()
    weights = tower.blend_weights(ids)
    center = tower.text_center
    assert center.shape == (16,) and center.any()  # the average training user's text vector
    np.testing.assert_allclose(
        score, learned + weights * (normalize(text) @ (pooled - center)), atol=1e-5
    )
    assert weights[-1] == pytest.approx(0.5)  # never seen in training: the full weight
    counts = np.array([tower.item_counts.get(i, 0) for i in ids])
    assert counts.max() > 0
    assert weights[np.argmax(counts)] == pytest.approx(0.5 / (1 + counts.max()))  # shrinks


def test_blend_weight_is_chosen_on_validation_and_saved(tmp_path: Path) -> None:
    vectors, train, val = _setup()
    cfg = SequentialConfig(dim=8, max_len=4, epochs=2, batch_size=4, blend_grid=(0.0, 0.3))
    tower, card = train_sequential(vectors, train, val, cfg, progress=False)
    assert [row["cold_blend"] for row in card["blend"]] == [0.0, 0.3]
    floor = card["blend_zero_shot"]["cold_recall@100"]
    keeping = [r for r in card["blend"] if r["cold_recall@100"] >= floor or floor != floor]
    key = "ndcg@10" if keeping else "cold_recall@100"
    keeping = keeping or card["blend"]
    best = max(keeping, key=lambda r: (r[key], -r["cold_blend"]))
    assert tower.cfg.cold_blend == best["cold_blend"]
    tower = tower.with_blend(0.3)
    tower.save(tmp_path / "tower")
    loaded = SequentialTower.load(tmp_path / "tower")
    assert loaded.cfg.cold_blend == 0.3 and loaded.item_counts == tower.item_counts
    np.testing.assert_allclose(loaded.text_center, tower.text_center)
    np.testing.assert_allclose(
        loaded.item_transform(vectors.ids, vectors.matrix),
        tower.item_transform(vectors.ids, vectors.matrix),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="dims"):
        loaded.bind(ItemVectors(vectors.ids, vectors.matrix))  # text vectors, not indexed ones
