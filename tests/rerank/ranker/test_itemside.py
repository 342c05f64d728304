"""The item-side tables a build saves answer every request after its log as the events would,
and hold nothing per user."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from catalog.model import Item
from catalog.text import HistoryEvent
from rerank.ranker.candidates import CandidateStage
from rerank.ranker.daycounts import HORIZON, DayCounts
from rerank.ranker.features import DAY, WINDOWS, EventLog, Request, window_start
from rerank.ranker.neighbours import cooccurrence_top_k, top_k_rows
from rerank.ranker.tables import FORMAT, SPEC, StageTables
from retrieval.index import FlatIndex
from retrieval.towers import MeanItemsTower
from retrieval.vectors import ItemVectors, normalize

T0 = 1_000_000_000


def _log(rng: np.random.Generator, n: int, items: int) -> EventLog:
    cols = rng.integers(0, items, n).astype(np.int64)
    times = (T0 + rng.integers(0, 400 * DAY, n)).astype(np.int64)
    ratings = np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 11, n) / 2.0)
    return EventLog(items, cols, times, ratings)


def test_day_counts_answer_every_request_after_the_log_as_the_log_does() -> None:
    log = _log(np.random.default_rng(0), 3_000, 25)
    counts = DayCounts.of(log)
    cols = np.arange(25, dtype=np.int64)
    assert counts.end == log.end
    for late in (0, 1, 3_599, DAY // 2, DAY, 3 * DAY + 17, HORIZON * DAY - 1):
        at = np.full(25, log.end + late, np.int64)
        np.testing.assert_array_equal(counts.count_before(cols, at), log.count_before(cols, at))
        for days in WINDOWS:
            start = window_start(at, days)
            np.testing.assert_array_equal(
                counts.count_before(cols, start), log.count_before(cols, start)
            )
            # one time for every item (the popularity source's question): the same counts
            one = np.asarray(int(start[0]))
            np.testing.assert_array_equal(
                counts.count_before(cols, one), log.count_before(cols, one)
            )
            assert counts.count_before(cols, one).dtype == counts.count_before(cols, start).dtype
        one = np.asarray(int(at[0]))
        np.testing.assert_array_equal(counts.count_before(cols, one), log.count_before(cols, at))
        np.testing.assert_allclose(
            counts.shrunk_mean_before(cols, at), log.shrunk_mean_before(cols, at), atol=1e-12
        )
        assert counts.global_mean_before(int(at[0])) == pytest.approx(
            log.global_mean_before(int(at[0]))
        )
    np.testing.assert_array_equal(counts.has_events(cols), log.has_events(cols))
    has = log.has_events(cols)
    np.testing.assert_array_equal(counts.first_time(cols)[has], log.first_time(cols)[has])
    # a few ints an item: no event is kept
    assert counts.at_bounds.shape == (25, len(counts.bounds)) and len(counts.bounds) < 50


def test_day_counts_refuse_a_request_before_the_log_ends() -> None:
    counts = DayCounts.of(_log(np.random.default_rng(1), 500, 10))
    cols = np.arange(10, dtype=np.int64)
    with pytest.raises(ValueError, match=f"log's end \\({counts.end}\\)"):
        counts.shrunk_mean_before(cols, np.full(10, counts.end - 1, np.int64))
    for early in (np.full(10, counts.bounds[0] - 1), np.asarray(int(counts.bounds[0]) - 1)):
        with pytest.raises(ValueError, match="before the build's earliest stored day"):
            counts.count_before(cols, early)


def test_past_the_horizon_a_window_starts_at_the_last_stored_day() -> None:
    log = _log(np.random.default_rng(2), 2_000, 10)
    counts = DayCounts.of(log)
    cols = np.arange(10, dtype=np.int64)
    late = np.full(10, window_start(log.end + (HORIZON + 5) * DAY, 365), np.int64)
    last = counts.bounds[counts.bounds <= late[0]].max()
    np.testing.assert_array_equal(
        counts.count_before(cols, late), log.count_before(cols, np.full(10, last, np.int64))
    )


def test_top_k_rows_keep_each_rows_largest_ties_to_the_lower_column() -> None:
    m = sp.csr_matrix(np.array([[0, 3, 1, 3, 2], [5, 0, 0, 0, 1], [1, 1, 1, 1, 1]], np.float32))
    out = top_k_rows(m, 2).toarray()
    np.testing.assert_array_equal(out, [[0, 3, 0, 3, 0], [5, 0, 0, 0, 1], [1, 1, 0, 0, 0]])
    # ranked by another matrix of the same pattern
    by = sp.csr_matrix(np.array([[0, 1, 9, 1, 8], [1, 0, 0, 0, 2], [5, 4, 3, 2, 1]], np.float32))
    np.testing.assert_array_equal(
        top_k_rows(m, 2, by).toarray(), [[0, 0, 1, 0, 2], [5, 0, 0, 0, 1], [1, 1, 0, 0, 0]]
    )
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_rows(m, 0)


@pytest.mark.parametrize("k", [3, 100])
def test_cooccurrence_top_k_keeps_each_items_most_similar(k: int) -> None:
    rng = np.random.default_rng(3)
    dense = (rng.random((17, 40)) < 0.3).astype(np.float32)
    table, norm = cooccurrence_top_k(sp.csr_matrix(dense), k, block=4)
    co = dense @ dense.T
    np.fill_diagonal(co, 0)
    np.testing.assert_allclose(norm, np.sqrt(dense.sum(axis=1)))
    cosine = co / np.maximum(np.outer(norm, norm), 1e-12)
    got = table.toarray()
    for row in range(17):
        nonzero = np.flatnonzero(co[row])
        order = nonzero[np.argsort(-cosine[row, nonzero], kind="stable")][:k]
        np.testing.assert_array_equal(np.flatnonzero(got[row]), np.sort(order))
        np.testing.assert_array_equal(got[row, order], co[row, order])


ITEMS = {f"i{n}": Item(f"i{n}", f"item {n}", genres=("a",) if n % 2 else ("b",)) for n in range(12)}


def _histories() -> dict[str, list[HistoryEvent]]:
    rng = np.random.default_rng(4)
    return {
        f"u{u}": [
            HistoryEvent(f"i{int(i)}", T0 + u * 3_600 + n * DAY // 3, float(rng.integers(1, 6)))
            for n, i in enumerate(rng.choice(12, 8, replace=False))
        ]
        for u in range(15)
    }


def test_a_builds_saved_tables_give_every_later_request_the_fitted_features(tmp_path) -> None:  # type: ignore[no-untyped-def]
    histories = _histories()
    rng = np.random.default_rng(5)
    vectors = ItemVectors(list(ITEMS), normalize(rng.normal(size=(12, 8))))
    tower = MeanItemsTower(vectors, n_recent=5)
    index = FlatIndex(8).build(vectors.ids, vectors.matrix)
    fitted = StageTables.fit(ITEMS, histories, vectors)
    fitted.save(tmp_path)
    spec = json.loads((tmp_path / SPEC).read_text())
    assert spec["format"] == FORMAT and spec["events"] == 15 * 8
    loaded = StageTables.load(tmp_path)
    assert loaded.log_cols is None and "log_cols" not in np.load(tmp_path / "stage.npz").files
    depths = {"tower": 6, "covisit": 4, "als": 4, "popular": 3}
    exact = CandidateStage.from_tables(fitted, tower, index, depths=depths)
    served = CandidateStage.from_tables(loaded, tower, index, depths=depths)
    end = max(e.timestamp for h in histories.values() for e in h) + 1
    requests = [
        Request(u, histories[u], end + late)
        for u, late in (("u0", 0), ("u3", 5 * 3_600), ("u7", 2 * DAY + 1), ("u9", 9 * DAY))
    ]
    seen = [{e.item_id for e in r.history} for r in requests]
    a, b = exact.lists(requests, seen), served.lists(requests, seen)
    np.testing.assert_array_equal(a.cols, b.cols)
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(ValueError, match="log's end"):
        served.lists([Request("u0", histories["u0"], end - DAY)], [set()])


def test_tables_of_the_previous_format_are_made_item_side_on_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    histories = _histories()
    fitted = StageTables.fit(ITEMS, histories)
    assert fitted.log_cols is not None and fitted.log_times is not None
    assert fitted.log_ratings is not None
    col = {i: n for n, i in enumerate(ITEMS)}
    pairs = sorted({(col[e.item_id], u) for u, h in enumerate(histories.values()) for e in h})
    users_of = sp.csr_matrix(
        (np.ones(len(pairs), np.float32), ([p[0] for p in pairs], [p[1] for p in pairs])),
        shape=(12, len(histories)),
    )
    arrays = {
        "als_factors": fitted.als_factors,
        "log_cols": fitted.log_cols,
        "log_times": fitted.log_times,
        "log_ratings": fitted.log_ratings,
    }
    for name, m in (("covisit", fitted.covisit), ("users_of", users_of), ("genres", fitted.genres)):
        arrays.update(
            {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr}
        )
    np.savez(tmp_path / "stage.npz", **arrays)
    spec = {
        "format": "duorank.stage/1",
        "item_ids": list(ITEMS),
        "als": {"factors": 32, "regularization": 0.01, "alpha": 10.0, "iterations": 20, "seed": 0},
        "shapes": {"covisit": [12, 12], "users_of": [12, len(histories)], "genres": [12, 2]},
        "events": len(fitted.log_cols),
        "text": False,
    }
    (tmp_path / SPEC).write_text(json.dumps(spec))
    loaded = StageTables.load(tmp_path)
    assert loaded.log_cols is None and loaded.events == 15 * 8
    np.testing.assert_array_equal(loaded.cooccurrence.toarray(), fitted.cooccurrence.toarray())
    np.testing.assert_allclose(loaded.item_norm, fitted.item_norm)
    for name, value in fitted.counts.arrays().items():
        np.testing.assert_array_equal(loaded.counts.arrays()[name], value)
    (tmp_path / SPEC).write_text(json.dumps({**spec, "format": "duorank.stage/0"}))
    with pytest.raises(ValueError, match=r"format 'duorank\.stage/0'"):
        StageTables.load(tmp_path)
