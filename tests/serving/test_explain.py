"""Explanations in words: reasons from feature groups, never a feature that is the same for
every item of the list; a history title cited only where it pulls this item more than the
rest of the list; how far the ranking stage moved an item."""

from __future__ import annotations

import numpy as np
import pytest

from catalog import Item
from catalog.text import HistoryEvent
from retrieval.index import FlatIndex
from serving.explain import because, constant_columns, movement, reasons

NAMES = ("retrieval_score", "covisit_last5", "days_since_last", "pop_30d", "tower_present")
GROUPS = {
    "retrieval_score": "first_stage",
    "covisit_last5": "co_visitation",
    "days_since_last": "user",
    "pop_30d": "popularity",
    "tower_present": "sources",
}


def test_a_feature_constant_over_the_list_is_never_cited() -> None:
    x = np.array(
        [[0.9, 3.0, 12.0, 1.0, 1.0], [0.5, 0.0, 12.0, 4.0, 1.0], [0.2, 1.0, 12.0, 2.0, 0.0]]
    )
    constant = constant_columns(x)
    assert constant.tolist() == [False, False, True, False, False]
    effects = np.array([0.1, 0.6, -2.0, 0.3, 0.0])  # the constant column moves it most
    said = reasons(effects, x[0], NAMES, constant, GROUPS.__getitem__)
    assert [r.text for r in said] == [
        "often watched right after your recent titles",
        "popular this month",
        "close to your taste",
    ]
    assert [r.direction for r in said] == ["up", "up", "up"]
    assert sum(r.strength for r in said) == pytest.approx(1.0)
    assert said[0].strength == pytest.approx(0.6)
    down = reasons(-effects, x[0], NAMES, constant, GROUPS.__getitem__)
    assert down[0].text == "rarely watched right after your recent titles"
    assert down[0].direction == "down"


def test_a_missing_value_everywhere_is_constant_too() -> None:
    x = np.array([[np.nan, 1.0], [np.nan, 2.0]])
    assert constant_columns(x).tolist() == [True, False]
    mixed = np.array([[np.nan, 1.0], [3.0, 1.0]])
    assert constant_columns(mixed).tolist() == [False, True]


def test_a_title_is_cited_only_where_it_pulls_more_than_the_list() -> None:
    # history: "hub" is close to every item alike; "niche" is close to item a alone
    vectors = {
        "hub": [1.0, 0.0, 0.0],
        "niche": [0.0, 1.0, 0.0],
        "a": [0.6, 0.8, 0.0],
        "b": [0.6, 0.0, 0.8],
        "c": [0.6, 0.0, -0.8],
        "d": [0.6, -0.1, 0.79],
    }
    ids = list(vectors)
    index = FlatIndex(3).build(ids, np.array([vectors[i] for i in ids], dtype=np.float32))
    items = {i: Item(i, f"Title {i}") for i in ids}
    history = [HistoryEvent("hub", 1, 5.0, None), HistoryEvent("niche", 2, 5.0, None)]
    cited = because(index, ["a", "b", "c", "d"], history, items)
    assert [[b.item_id for b in row] for row in cited] == [["niche"], [], [], []]
    assert cited[0][0].lift >= 1.0 and cited[0][0].title == "Title niche"


def test_movement_in_words() -> None:
    assert movement(63, 1) == "up 62 places against the first stage's order"
    assert movement(2, 3) == "down 1 place against the first stage's order"
    assert movement(4, 4) == "same place as in the first stage's order"
    assert movement(None, 1) is None
