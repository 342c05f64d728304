"""The trained sequential tower over cached item vectors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, leave_one_out
from catalog.history import group_histories
from catalog.text import HistoryEvent
from retrieval.als import COLLAB_SETTINGS, fit_als, fold_in
from retrieval.sequential import SequentialConfig, SequentialTower
from retrieval.sequential_train import _val_metrics, train_sequential
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


CFG = SequentialConfig(
    dim=8, max_len=4, epochs=3, batch_size=4, patience=3, blend_grid=(), collab_grid=()
)


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
    cfg = SequentialConfig(
        dim=8, max_len=4, epochs=2, batch_size=4, blend_grid=(0.0, 0.3), collab_grid=()
    )
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


def test_embedding_many_users_equals_one_at_a_time() -> None:
    """Histories are batched by length through the GRU: every row must be a lone call's."""
    vectors, train, val = _setup()
    tower, _ = train_sequential(vectors, train, val, CFG, progress=False)
    events = train["u0"]
    states = (
        [UserState("cold")]
        + [  # every length, past max_len too, and a no-history user
            UserState("u0", {}, events[:n]) for n in range(1, len(events) + 1)
        ]
    )
    states += [UserState(u, {}, h) for u, h in train.items()]
    together = tower.embed(states)
    alone = np.vstack([tower.embed([s]) for s in states])
    assert len({min(len(s.history), CFG.max_len) for s in states}) >= 4
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert not together[0].any() and np.abs(together[1:]).sum(axis=1).min() > 0


def test_collab_block_adds_the_standardised_als_score() -> None:
    vectors, train, val = _setup()
    plain, _ = train_sequential(vectors, train, val, CFG, progress=False)
    rows = plain.item_rows
    collab = fit_als(
        train,
        rows,
        factors=CFG.collab_factors,
        reg=CFG.collab_reg,
        alpha=CFG.collab_alpha,
        iterations=CFG.collab_iterations,
        seed=CFG.seed,
    )
    assert collab.shape == (len(rows) + 1, CFG.collab_factors) and not collab[0].any()
    with pytest.raises(ValueError, match="ALS item factors"):
        SequentialTower(plain.net, replace(CFG, collab_weight=0.5), rows, 16)
    tower = SequentialTower(
        plain.net, replace(CFG, collab_weight=0.5), rows, 16, plain.item_counts, None, collab
    )
    ids = [*vectors.ids, "brand-new"]
    text = np.vstack([vectors.matrix, vectors.matrix[:1]])
    indexed = tower.item_transform(ids, text)
    assert indexed.shape == (len(ids), 8 + CFG.collab_factors)
    assert not indexed[-1, 8:].any()  # a new item has no factors: its text alone places it
    tower.bind(ItemVectors(ids, indexed))
    user = UserState("u0", {}, train["u0"])
    score = tower.embed([user])[0] @ indexed.T
    plain.bind(ItemVectors(ids, plain.item_transform(ids, text)))
    main = plain.embed([user])[0] @ plain.item_vectors.matrix.T  # type: ignore[union-attr]
    x = fold_in(collab, [[rows.get(e.item_id, 0) for e in train["u0"]]], 0.01, 10.0)[0]
    als = indexed[:, 8:] @ x
    assert als.std() > 0
    expected = main + 0.5 * (main.std() / als.std()) * als
    np.testing.assert_allclose(score, expected, atol=1e-4)
    assert not tower.embed([UserState("cold")]).any()  # still the popularity fallback


def test_collab_weight_is_chosen_on_validation_and_saved(tmp_path: Path) -> None:
    vectors, train, val = _setup()
    cfg = replace(CFG, epochs=2, blend_grid=(0.0, 0.3), collab_grid=(0.0, 0.2))
    tower, card = train_sequential(vectors, train, val, cfg, progress=False)
    assert len(card["collab_als"]) == len(COLLAB_SETTINGS)
    best_als = max(card["collab_als"], key=lambda r: r["ndcg@10"])
    assert (tower.cfg.collab_factors, tower.cfg.collab_reg, tower.cfg.collab_alpha) == (
        best_als["factors"],
        best_als["regularization"],
        best_als["alpha"],
    )
    pairs = [(r["cold_blend"], r["collab_weight"]) for r in card["blend"]]
    assert sorted(pairs) == [(0.0, 0.0), (0.0, 0.2), (0.3, 0.0), (0.3, 0.2)]
    floor = card["blend_zero_shot"]["cold_recall@100"]
    keeping = [r for r in card["blend"] if r["cold_recall@100"] >= floor or floor != floor]
    key = "ndcg@10" if keeping else "cold_recall@100"
    best = max(
        keeping or card["blend"], key=lambda r: (r[key], -r["collab_weight"], -r["cold_blend"])
    )
    assert (tower.cfg.cold_blend, tower.cfg.collab_weight) == (
        best["cold_blend"],
        best["collab_weight"],
    )
    # the search's combined scores are the bound tower's own inner products
    for row in card["blend"]:
        trial = tower.with_blend(row["cold_blend"], row["collab_weight"])
        trial.bind(ItemVectors(vectors.ids, trial.item_transform(vectors.ids, vectors.matrix)))
        assert trial.item_vectors is not None
        users = [u for u in val if u in train and val[u] in set(vectors.ids)]
        got = _val_metrics(trial, trial.item_vectors, train, val, users, tower.item_counts)
        assert got["ndcg@10"] == pytest.approx(row["ndcg@10"], abs=1e-6)
        assert got["recall@100"] == pytest.approx(row["recall@100"], abs=1e-6)
    saved = tower.with_blend(0.3, 0.2)
    saved.save(tmp_path / "tower")
    loaded = SequentialTower.load(tmp_path / "tower")
    assert loaded.cfg.collab_weight == 0.2 and loaded.collab is not None
    np.testing.assert_allclose(loaded.collab, saved.collab)  # type: ignore[arg-type]
    indexed = loaded.item_transform(vectors.ids, vectors.matrix)
    np.testing.assert_allclose(
        indexed, saved.item_transform(vectors.ids, vectors.matrix), atol=1e-6
    )
    loaded.bind(ItemVectors(vectors.ids, indexed))
    saved.bind(ItemVectors(vectors.ids, indexed))
    user = UserState("u1", {}, train["u1"])
    np.testing.assert_allclose(loaded.embed([user]), saved.embed([user]), atol=1e-6)
    # a folder whose weights lost the factors is refused by name, not served without them
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "tower" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["collab.item_factors"]
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=r"model\.safetensors.*collab_weight 0\.2"):
        SequentialTower.load(tmp_path / "tower")


def test_covariance_by_blocks_is_numpys_without_a_float64_copy() -> None:
    """The collaborative blend's score spreads: the covariance a block of rows at a time
    equals NumPy's over the whole matrix (to float64 rounding), for any block size."""
    from retrieval.sequential import covariance

    rng = np.random.default_rng(0)
    matrix = (rng.normal(size=(1_000, 7)) * [1, 2, 3, 0.1, 5, 1, 1] + 3).astype(np.float32)
    expected = np.cov(matrix.astype(np.float64), rowvar=False, bias=True)
    for block in (1_000, 333, 64, 1):
        np.testing.assert_allclose(
            covariance(matrix, block=block), expected, rtol=1e-10, atol=1e-12
        )
    assert covariance(matrix[:0]).shape == (7, 7)
