"""Exposure metrics: hand-computed lists where the concentration is known."""

from __future__ import annotations

import numpy as np
import pytest

from metrics import exposure_counts, gini_at_k, max_user_share_at_k, slot_share_at_k


def test_exposure_counts_each_item_once_per_list() -> None:
    ranked = np.array([[0, 1, 1], [1, 2, -1]])
    assert exposure_counts(ranked, 3, 4).tolist() == [1, 2, 1, 0]
    assert exposure_counts(ranked, 1, 4).tolist() == [1, 1, 0, 0]


def test_gini_is_zero_when_equal_and_near_one_when_one_item_takes_all() -> None:
    equal = np.array([[0, 1], [2, 3]])
    assert gini_at_k(equal, 2, 4) == pytest.approx(0.0)
    hub = np.array([[0], [0], [0], [0]])
    assert gini_at_k(hub, 1, 4) == pytest.approx(0.75)  # (n - 1) / n for one item of n
    # half the catalog never shown, the rest equally: G = 0.5
    assert gini_at_k(np.array([[0], [1]]), 1, 4) == pytest.approx(0.5)
    assert np.isnan(gini_at_k(np.full((2, 1), -1), 1, 4))


def test_max_user_share_and_the_cold_restriction() -> None:
    ranked = np.array([[0, 3], [0, 2], [0, 3], [1, 2]])
    assert max_user_share_at_k(ranked, 2, 4) == (0.75, 0)
    cold = np.array([False, False, True, True])
    share, item = max_user_share_at_k(ranked, 2, 4, among=cold)
    assert share == 0.5 and item in (2, 3)
    assert max_user_share_at_k(ranked, 2, 4, among=np.zeros(4, bool)) == (0.0, -1)
    assert slot_share_at_k(ranked, 2, cold) == pytest.approx(4 / 8)
    assert slot_share_at_k(ranked, 1, cold) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        gini_at_k(ranked, 0, 4)
