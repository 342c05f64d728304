"""Cold-item dropout: a rewritten row reads exactly as an item with no events does."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from catalog.text import HistoryEvent
from rerank.ranker.candidates import Lists
from rerank.ranker.cold import COLD, as_cold, with_cold_copies, with_cold_rows
from rerank.ranker.features import DAY, Request, group_of
from rerank.ranker.model import GBDTRanker, RankerConfig
from tests.rerank.ranker.test_ranking_stage import N_ITEMS, T0, _events, _log, _stage

COLD_ITEM = "i5"


def _rows(
    histories: dict[str, list[HistoryEvent]], request: Request, exposure: np.ndarray
) -> tuple[dict[str, np.ndarray], Lists]:
    """Each candidate's feature row for ``request``, and the lists they came from."""
    stage = _stage(histories)
    stage.depths["tower"] = N_ITEMS  # the tower proposes every item, events or none
    stage.features.exposure = exposure  # the tower's, over every user: held as it was
    lists = stage.lists([request], [{e.item_id for e in request.history}])
    return {stage.item_ids[c]: lists.x[n] for n, c in enumerate(lists.cols)}, lists


def test_a_cold_row_is_what_the_features_compute_for_an_item_with_no_events() -> None:
    """The same request, once with the log as it is and once with every event of one item
    removed: that item's row in the second equals its row in the first read as cold."""
    log = _log()
    assert any(e.item_id == COLD_ITEM for h in log.values() for e in h)
    history = _events([0, 1, 2, 3], T0 + 40 * DAY)
    request = Request("me", history, T0 + 60 * DAY)
    exposure = np.linspace(0.0, 1.0, N_ITEMS, dtype=np.float32)
    warm, lists = _rows({**log, "me": history}, request, exposure)
    without = {u: [e for e in h if e.item_id != COLD_ITEM] for u, h in log.items()}
    cold, _ = _rows({**without, "me": history}, request, exposure)
    names, depths = lists.names, lists.depths
    expected = as_cold(warm[COLD_ITEM][None, :], names, depths)[0]
    np.testing.assert_array_equal(cold[COLD_ITEM], expected)
    changed = {names[n] for n in np.flatnonzero(~np.isclose(warm[COLD_ITEM], expected))}
    assert changed & set(COLD)  # the item's counts were not already empty
    sources = list(depths)
    kept = {n for n in names if n not in COLD and group_of(n, sources) != "sources"}
    assert not changed & kept  # the content side and the user's side are left as they were


def test_cold_dropout_rewrites_the_share_asked_for_and_nothing_else() -> None:
    log = _log()
    stage = _stage(log)
    requests = [Request(u, h[:-1], h[-1].timestamp + 1) for u, h in sorted(log.items())]
    lists = stage.lists(
        requests,
        [{e.item_id for e in r.history} for r in requests],
        [log[r.user_id][-1].item_id for r in requests],
    )
    out = with_cold_rows(lists, 0.5, stage.depths, seed=0)
    cold = as_cold(lists.x, lists.names, stage.depths)
    is_cold = np.all((out.x == cold) | (np.isnan(out.x) & np.isnan(cold)), axis=1)
    is_same = np.all((out.x == lists.x) | (np.isnan(out.x) & np.isnan(lists.x)), axis=1)
    assert (is_cold | is_same).all()
    rewritten = is_cold & ~is_same
    assert 0.3 < rewritten.mean() < 0.7
    np.testing.assert_array_equal(out.labels, lists.labels)
    np.testing.assert_array_equal(out.sizes, lists.sizes)
    assert with_cold_rows(lists, 0.0, stage.depths, seed=0) is lists
    both = with_cold_copies(lists, 0.5, stage.depths, seed=0)  # what the ranker learns from
    n = len(lists.x)
    np.testing.assert_array_equal(both.x[:n], lists.x)  # every warm row kept as it was
    np.testing.assert_array_equal(both.x[n:], out.x)
    np.testing.assert_array_equal(both.sizes, np.concatenate([lists.sizes, lists.sizes]))
    assert both.users == lists.users * 2
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with_cold_rows(lists, 1.0, stage.depths, seed=0)
    assert lists.depths == stage.depths  # the lists say what an unproposed rank reads
    with pytest.raises(ValueError, match="no depth for source 'covisit'"):
        GBDTRanker.fit(replace(lists, depths={}), RankerConfig(max_rounds=2, threads=1))


def _taste_lists(n_lists: int, seed: int) -> Lists:
    """Lists whose target is the candidate with the highest popularity plus text match: the
    counts say more, the text says something on its own."""
    rng = np.random.default_rng(seed)
    names = ("retrieval_score", "pop_all", "text_cos_last")
    xs, labels = [], []
    for _ in range(n_lists):
        pop = rng.uniform(1.0, 6.0, 20)
        text = rng.normal(size=20)
        xs.append(np.stack([rng.normal(size=20), pop, text], axis=1))
        y = np.zeros(20, np.float32)
        y[np.argmax(2.0 * pop + text + rng.normal(scale=0.3, size=20))] = 1
        labels.append(y)
    return Lists(
        np.concatenate(xs).astype(np.float32),
        np.full(n_lists, 20, np.int64),
        np.tile(np.arange(20), n_lists).astype(np.int64),
        np.concatenate(labels),
        names,
        [f"u{n}" for n in range(n_lists)],
    )


def test_with_cold_dropout_new_arrivals_compete_with_warm_items_on_their_text() -> None:
    """Trained on warm rows only, the trees put a row with no events below every warm one:
    nothing in training looked like it. With a share of rows read cold they learn what such a
    row is worth and order it by its text, so a new item the user takes is found."""
    from rerank.ranker.train import list_ndcg10

    train, test = _taste_lists(400, 0), _taste_lists(300, 1)
    mixed = with_cold_rows(test, 0.5, {}, seed=2)  # half the catalog new, targets too
    cold_rows = mixed.x[:, 1] == 0.0  # pop_all: warm rows read 1 to 6
    off = mixed.offsets
    new_target = np.array(
        [
            cold_rows[off[n] : off[n + 1]][mixed.labels[off[n] : off[n + 1]] > 0].any()
            for n in range(len(mixed.sizes))
        ]
    )
    lists = mixed.select(np.flatnonzero(new_target))
    figures = {}
    for rate in (0.0, 0.3):
        config = RankerConfig(max_rounds=80, min_data_in_leaf=20, threads=1, cold_dropout=rate)
        ranker = GBDTRanker.fit(train, config)
        figures[rate] = list_ndcg10(ranker.score(lists.x), lists).mean()
    assert len(lists.sizes) > 100
    assert figures[0.3] > figures[0.0] + 0.1, figures
