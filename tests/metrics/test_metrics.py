"""Metrics: cross-checked against ranx on random runs, plus hand-computed edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics import (
    auc,
    coverage_at_k,
    expected_calibration_error,
    hit_rate_at_k,
    logloss,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    per_user_auc,
    recall_at_k,
    top_k,
)

ranx = pytest.importorskip("ranx")


@st.composite
def runs(draw: st.DrawFn) -> tuple[np.ndarray, list[list[int]], int]:
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(2, 30))
    length = draw(st.integers(1, n_items))
    ranked, relevant = [], []
    for _ in range(n_users):
        row = draw(st.permutations(range(n_items)))[:length]
        ranked.append(list(row))
        relevant.append(
            draw(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=5, unique=True))
        )
    k = draw(st.integers(1, n_items + 3))
    return np.array(ranked, dtype=np.int64), relevant, k


def _ranx_scores(ranked: np.ndarray, relevant: list[list[int]], k: int) -> dict[str, float]:
    qrels = ranx.Qrels({f"u{u}": {f"i{i}": 1 for i in rel} for u, rel in enumerate(relevant)})
    run = ranx.Run(
        {
            f"u{u}": {f"i{i}": float(len(row) - r) for r, i in enumerate(row)}
            for u, row in enumerate(ranked)
        }
    )
    names = [f"{m}@{k}" for m in ("ndcg", "mrr", "recall", "map", "hit_rate")]
    out = ranx.evaluate(qrels, run, names)
    return {name.split("@")[0]: float(out[name]) for name in names}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_ranking_metrics_agree_with_ranx(case: tuple[np.ndarray, list[list[int]], int]) -> None:
    ranked, relevant, k = case
    expected = _ranx_scores(ranked, relevant, k)
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(expected["ndcg"], abs=1e-6)
    assert mrr_at_k(ranked, relevant, k) == pytest.approx(expected["mrr"], abs=1e-6)
    assert recall_at_k(ranked, relevant, k) == pytest.approx(expected["recall"], abs=1e-6)
    assert map_at_k(ranked, relevant, k) == pytest.approx(expected["map"], abs=1e-6)
    assert hit_rate_at_k(ranked, relevant, k) == pytest.approx(expected["hit_rate"], abs=1e-6)


def test_hand_computed_values() -> None:
    ranked = np.array([[5, 1, 2, -1]])
    relevant = [[1, 9]]
    assert recall_at_k(ranked, relevant, 3) == pytest.approx(0.5)
    assert hit_rate_at_k(ranked, relevant, 1) == 0.0
    assert mrr_at_k(ranked, relevant, 3) == pytest.approx(0.5)
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    )
    assert map_at_k(ranked, relevant, 3) == pytest.approx(0.5 / 2)


def test_user_without_relevant_items_is_nan_and_left_out_of_the_mean() -> None:
    ranked = np.array([[1, 2], [3, 4]])
    per = recall_at_k(ranked, [[], [4]], 2, per_user=True)
    assert isinstance(per, np.ndarray)
    assert math.isnan(per[0]) and per[1] == 1.0
    assert recall_at_k(ranked, [[], [4]], 2) == 1.0
    assert math.isnan(ndcg_at_k(ranked, [[], []], 2))


def test_k_larger_than_the_list_and_padding() -> None:
    ranked = np.array([[7, -1, -1]])
    assert recall_at_k(ranked, [[7, 8]], 50) == pytest.approx(0.5)
    assert ndcg_at_k(ranked, [[7]], 50) == pytest.approx(1.0)
    assert coverage_at_k(ranked, 50, n_items=10) == pytest.approx(0.1)


def test_duplicate_items_in_a_list_count_once() -> None:
    ranked = np.array([[3, 3, 4]])
    assert recall_at_k(ranked, [[3]], 3) == 1.0
    assert map_at_k(ranked, [[3, 4]], 3) == pytest.approx((1 + 2 / 3) / 2)


def test_padded_matrix_relevance_equals_list_form() -> None:
    rng = np.random.default_rng(1)
    ranked = np.stack([rng.permutation(50)[:20] for _ in range(30)])
    lists = [list(rng.choice(50, size=rng.integers(1, 4), replace=False)) for _ in range(30)]
    matrix = np.full((30, 3), -1)
    for u, rel in enumerate(lists):
        matrix[u, : len(rel)] = rel
    assert ndcg_at_k(ranked, matrix, 10) == pytest.approx(ndcg_at_k(ranked, lists, 10))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(np.array([[1]]), [[1]], 0)
    with pytest.raises(ValueError, match="2 users but ranked has 1"):
        recall_at_k(np.array([[1]]), [[1], [2]], 1)
    with pytest.raises(ValueError, match="2-D"):
        ndcg_at_k(np.array([1, 2]), [[1]], 1)


def test_top_k_breaks_ties_by_lower_index_and_hides_excluded() -> None:
    scores = np.array(
        [
            [1.0, 3.0, 3.0, 2.0, 3.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [-np.inf, 1.0, -np.inf, -np.inf, -np.inf],
        ]
    )
    out = top_k(scores, 3)
    assert out[0].tolist() == [1, 2, 4]
    assert out[1].tolist() == [0, 1, 2]
    assert out[2].tolist() == [1, -1, -1]
    assert top_k(scores, 9).shape == (3, 9)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-5, 5, allow_nan=False), st.booleans()), min_size=2, max_size=40)
)
def test_auc_equals_pairwise_definition(pairs: list[tuple[float, bool]]) -> None:
    scores = np.array([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs])
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        assert math.isnan(auc(scores, labels))
        return
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)))


def test_auc_ties_count_one_half_and_per_user_skips_one_class_users() -> None:
    assert auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert auc([0.1, 0.9], [0, 1]) == 1.0
    value = per_user_auc([0.1, 0.9, 0.8, 0.2, 0.3], [0, 1, 0, 1, 1], ["a", "a", "b", "b", "c"])
    assert value == pytest.approx((1.0 + 0.0) / 2)


def test_logloss_and_calibration() -> None:
    assert logloss([0.5, 0.5], [0, 1]) == pytest.approx(math.log(2))
    assert logloss([0.0], [1]) < 20  # clipped, finite
    assert expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0]) == pytest.approx(0.1)
    assert expected_calibration_error([0.5, 0.5], [1, 0]) == pytest.approx(0.0)


def test_single_target_metrics_from_ranks_equal_the_list_metrics() -> None:
    """Training validates from the target's rank; on tie-free scores that is exactly the
    list-based NDCG@K and Recall@K the benchmarks report."""
    from metrics import (
        ndcg_at_k,
        ndcg_at_k_from_ranks,
        recall_at_k,
        recall_at_k_from_ranks,
        target_ranks,
        top_k,
    )

    rng = np.random.default_rng(3)
    scores = rng.permutation(200 * 50).reshape(200, 50).astype(np.float64)  # no ties
    targets = rng.integers(0, 50, size=200)
    ranks = target_ranks(scores, targets)
    ranked = top_k(scores, 50)
    relevant = [[t] for t in targets]
    for k in (1, 5, 10, 50):
        assert ndcg_at_k_from_ranks(ranks, k) == pytest.approx(ndcg_at_k(ranked, relevant, k))
        assert recall_at_k_from_ranks(ranks, k) == pytest.approx(recall_at_k(ranked, relevant, k))


def test_target_ranks_give_ties_to_the_target_and_list_ranks_mark_absent() -> None:
    from metrics import ABSENT, list_ranks, ndcg_at_k_from_ranks, target_ranks

    scores = np.array([[0.5, 0.9, 0.5, -np.inf], [0.1, 0.2, 0.3, 0.4]])
    assert target_ranks(scores, [0, 0]).tolist() == [1, 3]  # the tie at 0.5 is not above
    ranks = list_ranks([["a", "b"], ["c"], []], ["b", "x", "y"])
    assert ranks.tolist() == [1, ABSENT, ABSENT]
    assert ndcg_at_k_from_ranks(ranks, 10) == pytest.approx((1 / np.log2(3)) / 3)
    assert np.isnan(ndcg_at_k_from_ranks([], 10))
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k_from_ranks(ranks, 0)


def test_heldout_ndcg_of_id_lists() -> None:
    import math

    from metrics import heldout_ndcg

    lists = [["a", "b", "c"], ["x", "y"], ["p"]]
    expected = (1 / math.log2(3) + 1.0 + 0.0) / 3  # b at rank 2, x at rank 1, q missing
    assert heldout_ndcg(lists, ["b", "x", "q"], 10) == expected
    assert heldout_ndcg(lists, ["c", "y", "p"], 2) == (0.0 + 1 / math.log2(3) + 1.0) / 3


def test_expected_calibration_error_refuses_a_score_that_is_no_probability() -> None:
    from metrics import expected_calibration_error

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0.2, -1.5, 3.0], [1, 0, 1])
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0


def test_top_k_of_long_rows_row_at_a_time_equals_the_batch_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A catalog-long row is cut one at a time (two passes, not eight): the same columns in
    the same order, ties to the lower index, -inf hidden, as the batch cut of short rows."""
    import metrics._core as core

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 12, (6, 400)).astype(np.float64)  # many ties
    scores[1, :] = -np.inf
    scores[2, 5:] = -np.inf  # fewer finite scores than k
    scores[3, rng.random(400) < 0.5] = -np.inf
    expected = {k: top_k(scores, k) for k in (1, 3, 10, 399)}
    monkeypatch.setattr(core, "ROW_AT_A_TIME", 100)
    for k, want in expected.items():
        np.testing.assert_array_equal(top_k(scores, k), want)
    assert (top_k(scores, 10)[1] == -1).all() and list(top_k(scores, 10)[2][5:]) == [-1] * 5
