"""User towers: text history, pooled item vectors, cold start, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import Item
from catalog.text import HistoryEvent
from retrieval.encoder import Encoder
from retrieval.towers import HistoryTextTower, MeanItemsTower, UserState, load_tower
from retrieval.vectors import ItemVectors

ITEMS = {
    "1": Item("1", "Toy Story (1995)", genres=("Animation",)),
    "2": Item("2", "Alien (1979)", genres=("Horror", "Sci-Fi")),
    "3": Item("3", "Heat (1995)", genres=("Crime",)),
}


def _vectors() -> ItemVectors:
    m = np.eye(3, 4, dtype=np.float32)
    return ItemVectors(["1", "2", "3"], m)


def test_mean_items_pools_recent_likes_only() -> None:
    tower = MeanItemsTower(_vectors(), n_recent=2)
    user = UserState(
        "u",
        history=[HistoryEvent("1", 1, 5.0), HistoryEvent("2", 2, 4.0), HistoryEvent("3", 3, 1.0)],
    )  # 3 is a dislike
    out = tower.embed([user])
    np.testing.assert_allclose(out[0], np.array([1, 1, 0, 0]) / np.sqrt(2), atol=1e-6)
    recency = MeanItemsTower(_vectors(), n_recent=2, weighting="recency", half_life=1.0)
    weighted = recency.embed([user])[0]
    assert weighted[1] > weighted[0] > 0  # the newer like weighs more
    assert np.linalg.norm(weighted) == pytest.approx(1.0)


def test_cold_user_is_a_zero_row() -> None:
    tower = MeanItemsTower(_vectors())
    out = tower.embed([UserState("new"), UserState("x", history=[HistoryEvent("zzz", 1, 5.0)])])
    assert not out.any()


def test_bad_tower_parameters() -> None:
    with pytest.raises(ValueError, match="weighting"):
        MeanItemsTower(_vectors(), weighting="max")


@pytest.mark.slow
def test_history_text_tower_uses_text_and_profile(encoder: Encoder) -> None:
    tower = HistoryTextTower(encoder, ITEMS)
    liked = UserState("u", history=[HistoryEvent("2", 1, 5.0)])
    profile_only = UserState("p", profile={"age": "25", "occupation": "writer"})
    nothing = UserState("n")
    out = tower.embed([liked, profile_only, nothing])
    assert tower.text(liked) == "Liked, most recent first: Alien (1979)"
    assert tower.text(profile_only) == "Profile: age 25, occupation writer"
    np.testing.assert_allclose(np.linalg.norm(out[:2], axis=1), 1.0, atol=1e-5)
    assert not out[2].any()  # no history, no profile -> popularity fallback
    items = encoder.encode([ITEMS[i].title for i in ("1", "2", "3")])
    assert int(np.argmax(items @ out[0])) == 1  # the Alien fan is closest to Alien


@pytest.mark.slow
def test_save_and_load(tmp_path: Path, encoder: Encoder) -> None:
    MeanItemsTower(_vectors(), n_recent=3, weighting="recency").save(tmp_path / "m")
    loaded = load_tower(tmp_path / "m", item_vectors=_vectors())
    assert isinstance(loaded, MeanItemsTower) and loaded.n_recent == 3
    HistoryTextTower(encoder, ITEMS).save(tmp_path / "h")
    text = load_tower(tmp_path / "h", encoder=encoder, items=ITEMS)
    assert isinstance(text, HistoryTextTower)
    with pytest.raises(ValueError, match="needs an encoder"):
        load_tower(tmp_path / "h")


def test_unit_rows_pool_a_view_as_its_normalized_copy_would_bit_for_bit() -> None:
    """A served sequential tower pools the text part of the index's own vectors (a strided
    view, rows not unit length) scaled as read: the same user vectors as pooling a normalized
    copy, with no copy held; the id map is shared, not rebuilt."""
    from retrieval.vectors import normalize

    rng = np.random.default_rng(0)
    wide = (rng.normal(size=(40, 12)) * rng.uniform(0.1, 3.0, (40, 1))).astype(np.float32)
    wide[7] = 0.0  # an item without text stays a zero row
    vectors = ItemVectors([f"i{n}" for n in range(40)], wide)
    part = vectors.with_matrix(wide[:, 4:10])
    assert part._pos is vectors._pos and np.shares_memory(part.matrix, wide)
    copy = ItemVectors(vectors.ids, normalize(wide[:, 4:10]))
    users = [
        UserState("a", {}, [HistoryEvent(f"i{n}", n, 4.0) for n in (3, 7, 11, 12, 30, 31)]),
        UserState("b", {}, [HistoryEvent("i7", 1, 5.0)]),
        UserState("c", {}, []),
    ]
    viewed = MeanItemsTower(part, n_recent=5, unit_rows=True).embed(users)
    np.testing.assert_array_equal(viewed, MeanItemsTower(copy, n_recent=5).embed(users))
    assert not np.array_equal(viewed, MeanItemsTower(part, n_recent=5).embed(users))
    with pytest.raises(ValueError, match="40 ids, 39 vectors"):
        vectors.with_matrix(wide[:39])
