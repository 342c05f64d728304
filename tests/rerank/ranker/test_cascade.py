"""The text cascade: top rows, the served order, and a second pass that learns when to trust
the text (synthetic lists where only the text knows the new items)."""

from __future__ import annotations

import numpy as np
import pytest

from rerank.ranker.candidates import Lists
from rerank.ranker.cascade import (
    FIRST_PASS,
    TEXT_LOGIT,
    cascade_lists,
    cross_fitted_cascade,
    reordered,
    top_rows,
)
from rerank.ranker.train import list_ndcg10


def _lists(sizes: list[int], x: np.ndarray, labels: np.ndarray) -> Lists:
    total = int(sum(sizes))
    return Lists(
        x.astype(np.float32),
        np.array(sizes, dtype=np.int64),
        np.arange(total, dtype=np.int64),
        labels.astype(np.float32),
        ("retrieval_score", "pop_all"),
        [f"u{n}" for n in range(len(sizes))],
    )


def synthetic(n_lists: int, size: int, seed: int) -> tuple[Lists, np.ndarray, np.ndarray]:
    """Half the lists hold five new items (pop_all 0) that the first pass ranks between
    positions 5 and 15; the target is one of them, and only the text logit tells which. The
    other half's targets are warm items the first pass already ranks first. The text is
    noise everywhere else."""
    rng = np.random.default_rng(seed)
    xs, labels, text = [], [], []
    for n in range(n_lists):
        score = np.sort(rng.normal(size=size))[::-1].copy()
        pop = rng.uniform(3.0, 6.0, size=size)  # log1p counts: 20 to 400 events
        logit = rng.normal(size=size)
        y = np.zeros(size)
        if n % 2:  # five new items; the text singles out the one the user took
            new = rng.choice(np.arange(5, 15), 5, replace=False)
            pop[new] = 0.0
            t = int(new[0])
            logit[t] = 4.0
        else:
            t = 0
        y[t] = 1.0
        xs.append(np.column_stack([score, pop]))
        labels.append(y)
        text.append(logit)
    lists = _lists([size] * n_lists, np.vstack(xs), np.concatenate(labels))
    first = lists.column("retrieval_score").astype(np.float64)
    return lists, first, np.concatenate(text)


def test_top_rows_are_each_lists_best_by_score_ties_in_list_order() -> None:
    lists = _lists([3, 2], np.zeros((5, 2)), np.zeros(5))
    scores = np.array([0.1, 0.5, 0.5, 2.0, 1.0])
    assert top_rows(lists, scores, 2).tolist() == [1, 2, 3, 4]
    assert top_rows(lists, scores, 1).tolist() == [1, 3]


def test_cascade_lists_add_the_first_pass_and_the_text_to_the_top_rows() -> None:
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    lists = _lists([3, 2], x, np.array([0, 1, 0, 1, 0]))
    first = np.array([0.1, 0.5, 0.3, 2.0, 1.0])
    text = np.array([9.0, 8.0, 7.0, 6.0, 5.0])
    rows = top_rows(lists, first, 2)
    top = cascade_lists(lists, rows, first, text)
    assert top.names[-2:] == (FIRST_PASS, TEXT_LOGIT)
    assert top.sizes.tolist() == [2, 2]
    assert top.labels.tolist() == [1, 0, 1, 0]
    assert top.column(TEXT_LOGIT).tolist() == [8.0, 7.0, 6.0, 5.0]
    assert top.column(FIRST_PASS).tolist() == pytest.approx([0.5, 0.3, 2.0, 1.0])


def test_reordered_puts_the_second_pass_order_above_the_rest() -> None:
    lists = _lists([4], np.zeros((4, 2)), np.zeros(4))
    first = np.array([4.0, 3.0, 2.0, 1.0])
    rows = top_rows(lists, first, 2)  # rows 0 and 1
    out = reordered(first, lists, rows, np.array([0.0, 1.0]))  # the second pass flips them
    assert np.argsort(-out, kind="stable").tolist() == [1, 0, 2, 3]


def test_the_second_pass_learns_to_trust_the_text_where_counts_are_missing() -> None:
    lists, first, text = synthetic(400, 30, seed=0)
    scores, fits = cross_fitted_cascade(lists, first, text, depth=20, seed=0)
    before = list_ndcg10(first, lists)
    after = list_ndcg10(scores, lists)
    new = np.arange(400) % 2 == 1
    assert after[new].mean() > before[new].mean() + 0.3  # the new items rise to the top
    assert after[~new].mean() > 0.9  # warm targets stay at the top (first pass: 1.0)
    assert len(fits) == 2 and all(f["rounds"] >= 1 for f in fits)


def test_without_text_the_second_pass_cannot_find_the_new_items() -> None:
    lists, first, text = synthetic(400, 30, seed=0)
    scores, _ = cross_fitted_cascade(lists, first, np.zeros_like(text), depth=20, seed=0)
    new = np.arange(400) % 2 == 1
    assert list_ndcg10(scores, lists)[new].mean() < 0.7  # new items rise, but which one?
