"""Splits, k-core filtering and labelling."""

from __future__ import annotations

import numpy as np
import pytest

from catalog import (
    DataError,
    Interactions,
    global_time_split,
    k_core,
    label_by_rating,
    leave_one_out,
)


def _log() -> Interactions:
    return Interactions(
        ["a", "a", "a", "a", "b", "b", "c"],
        ["1", "2", "3", "4", "1", "2", "9"],
        [10, 20, 30, 40, 5, 6, 1],
        [5, 4, 3, 2, 1, 5, 4],
    )


def test_leave_one_out_puts_last_in_test_and_second_last_in_validation() -> None:
    split = leave_one_out(_log())
    test = dict(zip(split.test.user_ids.tolist(), split.test.item_ids.tolist(), strict=True))
    val = dict(
        zip(split.validation.user_ids.tolist(), split.validation.item_ids.tolist(), strict=True)
    )
    assert test == {"a": "4", "b": "2"}
    assert val == {"a": "3"}  # b has two interactions: one train, one test
    assert sorted(split.train.item_ids[split.train.user_ids == "a"].tolist()) == ["1", "2"]
    assert split.train.item_ids[split.train.user_ids == "c"].tolist() == ["9"]
    assert sum(split.sizes().values()) == len(_log())


def test_ties_are_broken_by_seeded_random_order_not_by_id() -> None:
    n = 200
    inter = Interactions(["u"] * n, [str(i) for i in range(n)], [7] * n)
    first = leave_one_out(inter, seed=1).test.item_ids.tolist()
    assert leave_one_out(inter, seed=1).test.item_ids.tolist() == first
    picks = {leave_one_out(inter, seed=s).test.item_ids[0] for s in range(10)}
    assert len(picks) > 5  # not always the same (e.g. highest) id


def test_global_time_split() -> None:
    split = global_time_split(_log(), test_from=30, validation_from=10)
    assert split.train.timestamps.tolist() == [5, 6, 1]
    assert sorted(split.validation.timestamps.tolist()) == [10, 20]
    assert sorted(split.test.timestamps.tolist()) == [30, 40]
    with pytest.raises(DataError, match="validation_from"):
        global_time_split(_log(), test_from=10, validation_from=20)


def test_k_core_is_iterative() -> None:
    inter = Interactions(["a", "a", "b", "b", "c"], ["1", "2", "1", "2", "3"], [1, 2, 3, 4, 5])
    core = k_core(inter, 2)
    assert sorted(set(core.user_ids.tolist())) == ["a", "b"]
    assert "3" not in core.item_ids
    assert len(k_core(inter, 3)) == 0


def test_label_by_rating() -> None:
    labelled = label_by_rating(_log(), threshold=4.0)
    assert labelled.labels.tolist() == [1, 1, 0, 0, 0, 1, 1]
    unrated = Interactions(["a"], ["1"], [1])
    assert label_by_rating(unrated).labels.tolist() == [-1]
    assert np.array_equal(labelled.ratings, _log().ratings)
