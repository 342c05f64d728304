"""The column-backed view of every user's history gives exactly what group_histories gives."""

from __future__ import annotations

import numpy as np

from catalog import Interactions
from catalog.history import HistoryView, group_histories


def test_the_view_is_group_histories_without_an_object_per_event() -> None:
    rng = np.random.default_rng(0)
    n = 500
    ratings = rng.integers(1, 11, n) / 2
    ratings[::3] = np.nan
    labels = rng.integers(-1, 2, n)
    inter = Interactions(
        rng.choice(["a", "b", "ü", "42"], n),
        rng.integers(0, 50, n).astype(str),
        rng.integers(0, 20, n),  # many ties in time: the seeded order must match
        ratings,
        labels,
    )
    grouped, view = group_histories(inter), HistoryView(inter)
    assert list(view) == list(grouped) and len(view) == len(grouped)
    assert all(view[u] == grouped[u] for u in grouped)
    assert view.size("a") == len(grouped["a"]) and view.size("nobody") == 0
    assert "nobody" not in view and view.get("nobody") is None
    assert len(HistoryView(Interactions([], [], []))) == 0
