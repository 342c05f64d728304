"""The text side by side: a weight fitted on one half of the lists scores the other."""

from __future__ import annotations

import numpy as np

from benchmarks.evaluation.text import cross_fitted, fit_blend, tower_top
from rerank.ranker.candidates import Lists
from rerank.ranker.train import list_ndcg10


def _lists(n_lists: int = 60, size: int = 20, seed: int = 0) -> Lists:
    rng = np.random.default_rng(seed)
    labels = np.zeros(n_lists * size, dtype=np.float32)
    labels[np.arange(n_lists) * size + rng.integers(0, size, n_lists)] = 1.0
    ranks = np.tile(np.arange(size, dtype=np.float32), n_lists)
    x = np.stack([ranks, np.ones_like(ranks)], axis=1)
    return Lists(
        x,
        np.full(n_lists, size, dtype=np.int64),
        np.arange(n_lists * size, dtype=np.int64),
        labels,
        ("tower_rank", "tower_present"),
        [f"u{n}" for n in range(n_lists)],
    )


def test_an_informative_text_earns_weight_and_noise_does_not() -> None:
    lists = _lists()
    rng = np.random.default_rng(1)
    base = rng.normal(size=len(lists.cols))  # a first stage that knows nothing
    informative = lists.labels * 3.0 + rng.normal(scale=0.5, size=len(lists.cols))
    a, w = fit_blend(base, informative, lists)
    assert w > 1.0
    scores, fits = cross_fitted(base, informative, lists, seed=0)
    assert len(fits) == 2 and all(f["w"] > 1.0 for f in fits)
    assert list_ndcg10(scores, lists).mean() > list_ndcg10(base, lists).mean() + 0.3
    # Text unrelated to the targets gets (close to) no weight against an informative base.
    good_base = lists.labels * 3.0 + rng.normal(scale=0.5, size=len(lists.cols))
    noise = rng.normal(size=len(lists.cols))
    a, w = fit_blend(good_base, noise, lists)
    assert abs(w) < 0.25 * a


def test_cross_fitting_scores_each_half_with_the_other_halfs_fit() -> None:
    lists = _lists(n_lists=40)
    rng = np.random.default_rng(2)
    base = rng.normal(size=len(lists.cols))
    text = rng.normal(size=len(lists.cols))
    scores, fits = cross_fitted(base, text, lists, seed=3)
    off = lists.offsets
    order = np.random.default_rng(3).permutation(len(lists.sizes))
    second = set(order[20:].tolist())  # scored with the fit on the first half
    for n in range(len(lists.sizes)):
        fit = fits[0] if n in second else fits[1]
        rows = slice(off[n], off[n + 1])
        np.testing.assert_allclose(scores[rows], fit["a"] * base[rows] + fit["w"] * text[rows])


def test_tower_top_keeps_the_towers_first_ranks_only() -> None:
    lists = _lists(n_lists=3, size=8)
    kept = tower_top(lists, depth=5)
    assert kept.sizes.tolist() == [5, 5, 5]
    assert kept.column("tower_rank").max() == 4


def _with_history(lists: Lists) -> Lists:
    """The cascade test's lists with a ``history_length`` column (every user: 20 events)."""
    x = np.column_stack([lists.x, np.full(len(lists.cols), np.log1p(20.0))])
    return Lists(
        x.astype(np.float32),
        lists.sizes,
        lists.cols,
        lists.labels,
        (*lists.names, "history_length"),
        lists.users,
    )


def test_the_cascade_serves_only_when_the_text_beats_its_control() -> None:
    from benchmarks.evaluation.text import cascade_side_by_side
    from tests.rerank.ranker.test_cascade import synthetic

    lists, first, text = synthetic(400, 30, seed=0)
    lists = _with_history(lists)
    report = cascade_side_by_side(lists, first, text, 0, {20: 10.0}, depths=(20,))
    entry = report["depths"]["20"]
    assert report["served_depth"] == 20
    assert entry["all"]["minus_control"] > 3 * entry["all"]["minus_control_se"]
    assert entry["ms_per_call"] == 10.0
    rare = entry["rare targets (at most 10 events before the request)"]
    assert rare["lists"] == 200 and rare["minus_first_pass"] > 0.5  # the new targets' slice
    # A logit that says nothing: the cascade is its own control, and no text pass serves.
    silent = cascade_side_by_side(lists, first, np.zeros_like(text), 0, depths=(20,))
    assert silent["served_depth"] is None
    assert silent["depths"]["20"]["all"]["minus_control"] == 0.0
