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
