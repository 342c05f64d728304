"""The ranking stage: time-safe features, leak-free stacking, the features ranker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catalog.model import Item
from catalog.text import HistoryEvent
from rerank.ranker.candidates import CandidateStage, Lists, exposure
from rerank.ranker.features import DAY, FEATURE_GROUPS, EventLog, Request, feature_names
from rerank.ranker.model import GBDTRanker, LikeModel, RankerConfig, list_loss
from rerank.ranker.stacking import SHORT, short_copies, short_positions, stack
from rerank.ranker.tables import StageTables
from retrieval.index import FlatIndex
from retrieval.towers import MeanItemsTower
from retrieval.vectors import ItemVectors, normalize

N_ITEMS = 12
ITEMS = {
    f"i{n}": Item(f"i{n}", f"item {n}", genres=(("a",) if n % 2 else ("b",)))
    for n in range(N_ITEMS)
}
T0 = 1_000_000_000


def _events(
    items: list[int], start: int, step: int = DAY, rating: float = 4.0
) -> list[HistoryEvent]:
    return [HistoryEvent(f"i{i}", start + n * step, rating) for n, i in enumerate(items)]


def _log(extra: dict[str, list[HistoryEvent]] | None = None) -> dict[str, list[HistoryEvent]]:
    rng = np.random.default_rng(0)
    log = {
        f"u{u}": _events([int(i) for i in rng.choice(N_ITEMS, 8, replace=False)], T0 + u * 3600)
        for u in range(12)
    }
    log.update(extra or {})
    return log


def _stage(histories: dict[str, list[HistoryEvent]]) -> CandidateStage:
    rng = np.random.default_rng(1)
    vectors = ItemVectors(list(ITEMS), normalize(rng.normal(size=(N_ITEMS, 8))))
    tower = MeanItemsTower(vectors, n_recent=5)
    index = FlatIndex(8).build(vectors.ids, vectors.matrix)
    return CandidateStage.build(
        ITEMS,
        histories,
        tower,
        index,
        vectors,
        depths={"tower": 6, "covisit": 4, "als": 4, "popular": 3},
    )


def test_event_log_counts_exactly_the_events_before_each_time() -> None:
    rng = np.random.default_rng(3)
    cols = rng.integers(0, 5, 300)
    times = rng.integers(0, 1000, 300)
    log = EventLog(5, cols.astype(np.int64), times.astype(np.int64), np.full(300, np.nan))
    for c in range(5):
        for t in (-5, 0, 1, 500, 999, 1000, 5000):
            assert log.count_before(np.array([c]), np.array([t]))[0] == int(
                ((cols == c) & (times < t)).sum()
            )
        assert log.first_time(np.array([c]))[0] == times[cols == c].min()


def test_features_never_read_an_event_at_or_after_the_request_time() -> None:
    """Another user's later events of the candidates would change the windowed counts, the
    age and the mean rating; cut at ``at`` they change nothing. An earlier one does."""
    history = _events([0, 1, 2], T0)
    at = T0 + 30 * DAY
    request = Request("u0", history, at)
    later = {"z": [HistoryEvent(f"i{i}", at + s, 1.0) for i in range(N_ITEMS) for s in (0, 5)]}
    earlier = {"z": [HistoryEvent(f"i{i}", at - 5, 1.0) for i in range(N_ITEMS)]}
    base = _stage(_log())

    def rows(log: dict[str, list[HistoryEvent]]) -> dict[str, np.ndarray]:
        stage = _stage(log)
        stage.features.log = EventLog.of(stage.features.item_col, log)  # only the log differs
        sets, towers = base.candidates([request], [set()])
        x, _ = base.features.compute([request], sets, towers)
        stage_x, _ = stage.features.compute([request], sets, towers)
        names = base.names
        return {n: stage_x[:, k] for k, n in enumerate(names)} | {
            f"base:{n}": x[:, k] for k, n in enumerate(names)
        }

    timed = (*FEATURE_GROUPS["popularity"], "item_mean_rating")
    after = rows(_log(later))
    for name in timed:
        np.testing.assert_array_equal(after[name], after[f"base:{name}"], err_msg=name)
    before = rows(_log(earlier))
    assert any(not np.array_equal(before[n], before[f"base:{n}"]) for n in timed)


def test_a_stacked_target_is_never_in_the_data_its_first_stage_fits_on() -> None:
    histories = _log({"short": _events([1, 2, 3], T0)})
    stacked = stack(histories, per_user=3, min_history=4)
    assert "short" not in {s.request.user_id for s in stacked.lists}  # too short: no list
    assert stacked.fit_histories["short"] == histories["short"]
    stage = _stage(stacked.fit_histories)
    for entry in stacked.lists:
        user = entry.request.user_id
        fitted = stacked.fit_histories[user]
        assert entry.target not in fitted
        # every fitted event precedes the user's first target; the request sees its past only
        assert all(e.timestamp < entry.target.timestamp for e in fitted)
        assert entry.target not in entry.request.history
        assert entry.request.at > entry.target.timestamp >= entry.request.history[-1].timestamp
        col = stage.features.item_col[entry.target.item_id]
        fit_count = sum(
            e.item_id == entry.target.item_id
            for h in stacked.fit_histories.values()
            for e in h
            if e.timestamp < entry.request.at
        )
        assert (
            stage.features.log.count_before(np.array([col]), np.array([entry.request.at]))[0]
            == fit_count
        )
    assert len(stacked.lists) == 3 * 12
    with pytest.raises(ValueError, match="per_user"):
        stack(histories, per_user=0)


def test_short_copies_give_some_lists_a_cold_users_history() -> None:
    """A short copy is a stacked list whose history is cut to its newest one to three events:
    the same user, request time and target, so every feature reads a user new this week."""
    stacked = stack(_log(), per_user=3, min_history=4)
    assert short_copies(stacked.lists, 0.0, seed=0) == []
    every = short_copies(stacked.lists, 1.0, seed=0)
    assert len(every) == len(stacked.lists)  # every history here is longer than three
    lengths = set()
    for copy, entry in zip(every, stacked.lists, strict=True):
        k = len(copy.request.history)
        lengths.add(k)
        assert SHORT[0] <= k <= SHORT[1]
        assert list(copy.request.history) == list(entry.request.history)[-k:]
        assert copy.target == entry.target and copy.request.at == entry.request.at
        assert copy.request.user_id == entry.request.user_id
    assert lengths == {1, 2, 3}
    half = short_positions(stacked.lists, 0.5, seed=0)
    assert 0 < len(half) < len(stacked.lists)
    assert set(short_positions(stacked.lists, 0.25, seed=0)) <= set(half)  # nested shares
    assert short_positions(stacked.lists, 0.5, seed=1) != half  # the seed draws them
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        short_copies(stacked.lists, 1.5, seed=0)


def test_lists_merge_every_source_and_mark_the_target() -> None:
    histories = _log()
    stage = _stage(histories)
    requests = [Request(u, h[:-1], h[-1].timestamp + 1) for u, h in sorted(histories.items())]
    excludes = [{e.item_id for e in r.history} for r in requests]
    targets = [histories[r.user_id][-1].item_id for r in requests]
    lists = stage.lists(requests, excludes, targets)
    ranker = GBDTRanker.fit(lists, RankerConfig(max_rounds=5, min_data_in_leaf=2, threads=1))
    assert np.isfinite(ranker.score(lists.x)).all()
    assert lists.names == feature_names(["tower", "covisit", "als", "popular"])
    assert len(set(lists.names)) == len(lists.names)  # LightGBM needs unique names
    assert lists.x.shape == (int(lists.sizes.sum()), len(lists.names))
    off = lists.offsets
    for n in range(len(requests)):
        ids = [stage.item_ids[c] for c in lists.cols[off[n] : off[n + 1]]]
        assert len(ids) == len(set(ids))  # deduplicated
        assert not set(ids) & excludes[n]  # nothing the user has seen
        labels = lists.labels[off[n] : off[n + 1]]
        assert labels.sum() == (targets[n] in ids)
    present = lists.x[:, [lists.names.index(f"{s}_present") for s in stage.depths]]
    assert (present.sum(axis=1) >= 1).all()  # every candidate came from some source


def _synthetic(n_lists: int, seed: int) -> Lists:
    """Lists where the target is the candidate with the highest 'signal' (which the base score
    knows only noisily): a ranker on the signal must beat the base."""
    rng = np.random.default_rng(seed)
    names = ("retrieval_score", "signal", "noise")
    xs, labels = [], []
    for _ in range(n_lists):
        signal = rng.normal(size=20)
        base = signal + rng.normal(scale=2.0, size=20)
        xs.append(np.stack([base, signal, rng.normal(size=20)], axis=1))
        y = np.zeros(20, np.float32)
        y[np.argmax(signal)] = 1
        labels.append(y)
    users = [f"u{n}" for n in range(n_lists)]
    return Lists(
        np.concatenate(xs).astype(np.float32),
        np.full(n_lists, 20, np.int64),
        np.tile(np.arange(20), n_lists).astype(np.int64),
        np.concatenate(labels),
        names,
        users,
    )


def test_the_ranker_learns_the_correction_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train, test = _synthetic(300, 0), _synthetic(200, 1)
    ranker = GBDTRanker.fit(train, RankerConfig(max_rounds=60, min_data_in_leaf=20, threads=1))
    assert ranker.scale > 0  # the base alone predicts the target somewhat
    base = test.column("retrieval_score") * ranker.scale
    assert list_loss(ranker.score(test.x), test) < list_loss(base, test) - 0.2
    assert ranker.importance()["signal"] > ranker.importance()["noise"]
    ranker.save(tmp_path / "ranker")
    again = GBDTRanker.load(tmp_path / "ranker")
    np.testing.assert_allclose(again.score(test.x), ranker.score(test.x))
    assert again.config == ranker.config
    card_path = tmp_path / "ranker" / "ranker.json"
    card = json.loads(card_path.read_text())
    del card["config"]["cold_dropout"]  # a card written before cold copies
    card_path.write_text(json.dumps(card))
    assert GBDTRanker.load(tmp_path / "ranker").config.cold_dropout == 0.0  # trained without
    empty = Lists(
        train.x, train.sizes, train.cols, np.zeros_like(train.labels), train.names, train.users
    )
    with pytest.raises(ValueError, match="holds its target"):
        GBDTRanker.fit(empty)
    with pytest.raises(ValueError, match="base feature"):
        GBDTRanker.fit(train.without_columns(["retrieval_score"]))


def _regime_lists(n_lists: int, seed: int, short: bool) -> Lists:
    """Lists whose target is the candidate highest on 'taste' for users with a long history,
    and highest on 'recent' for users with one to three events ('history_length' says which)."""
    lists = _synthetic(n_lists, seed)
    rng = np.random.default_rng(seed + 100)
    x = lists.x.copy()
    x[:, 1] = rng.normal(size=len(x))  # the 'signal' column becomes 'recent'
    names = ("retrieval_score", "recent", "taste", "history_length")
    taste = rng.normal(size=len(x))
    length = np.repeat(
        rng.integers(1, 4, n_lists) if short else rng.integers(20, 200, n_lists), lists.sizes
    )
    labels = np.zeros(len(x), np.float32)
    off = lists.offsets
    for n in range(n_lists):
        rows = slice(off[n], off[n + 1])
        labels[off[n] + np.argmax(x[rows, 1] if short else taste[rows])] = 1
    return Lists(
        np.column_stack([x[:, 0], x[:, 1], taste, np.log1p(length)]).astype(np.float32),
        lists.sizes,
        lists.cols,
        labels,
        names,
        [f"{'s' if short else 'w'}{u}" for u in lists.users],
    )


def test_extra_lists_teach_the_trees_a_regime_the_warm_lists_never_show() -> None:
    """Stacked lists hold only long histories, so trees learn nothing of users with a few
    events. Extra (short) lists teach that regime without costing the long one; early
    stopping still reads the warm lists only."""
    from rerank.ranker.train import list_ndcg10

    warm, short = _regime_lists(300, 0, short=False), _regime_lists(300, 1, short=True)
    test_warm, test_short = _regime_lists(200, 2, short=False), _regime_lists(200, 3, short=True)
    config = RankerConfig(max_rounds=80, min_data_in_leaf=20, threads=1, cold_dropout=0.0)
    alone = GBDTRanker.fit(warm, config)
    both = GBDTRanker.fit(warm, config, extra=short)
    assert both.record["extra_lists_with_target"] == 300
    assert both.record["held_out_lists"] == alone.record["held_out_lists"]  # warm lists only

    def ndcg(ranker: GBDTRanker, lists: Lists) -> float:
        return float(list_ndcg10(ranker.score(lists.x), lists).mean())

    assert ndcg(both, test_short) > ndcg(alone, test_short) + 0.2
    assert ndcg(both, test_warm) > ndcg(alone, test_warm) - 0.05
    with pytest.raises(ValueError, match="different features"):
        warm.extended(short.without_columns(["recent"]))


def test_the_like_head_separates_likes_and_round_trips_with_the_ranker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from metrics import auc

    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 3)).astype(np.float32)
    liked = (x[:, 0] + 0.5 * rng.normal(size=2000) > 0).astype(np.float32)
    users = [f"u{n % 200}" for n in range(2000)]
    names = ("item_mean_rating", "noise_a", "noise_b")
    like = LikeModel.fit(x[:1500], liked[:1500], names, users[:1500], RankerConfig(threads=1))
    p = like.probability(x[1500:])
    assert ((p > 0) & (p < 1)).all()
    assert auc(p, liked[1500:]) > 0.8
    with pytest.raises(ValueError, match="likes and dislikes"):
        LikeModel.fit(x, np.ones(2000, np.float32), names, users)
    train = _synthetic(100, 0)
    ranker = GBDTRanker.fit(train, RankerConfig(max_rounds=5, min_data_in_leaf=20, threads=1))
    ranker.like = like
    ranker.save(tmp_path / "r")
    again = GBDTRanker.load(tmp_path / "r")
    assert again.like is not None and again.like.names == names
    np.testing.assert_allclose(again.like.probability(x[1500:]), p)


def test_another_towers_stage_computes_what_a_stage_built_with_it_does() -> None:
    """``with_tower`` (each seed's tower in the evaluation) reuses the tables; its features,
    the learned-vector cosines included, equal those of a stage built with that tower."""
    histories = _log()
    tables = StageTables.fit(ITEMS, histories)
    rng = np.random.default_rng(7)
    vectors = ItemVectors(list(ITEMS), 3.0 * normalize(rng.normal(size=(N_ITEMS, 8))))
    other = MeanItemsTower(vectors, n_recent=5)
    index = FlatIndex(8).build(vectors.ids, vectors.matrix)
    swapped = _stage(histories).with_tower(other, index)
    built = CandidateStage.from_tables(
        tables, other, index, depths=swapped.depths, histories=histories
    )
    requests = [Request(u, h[:-1], h[-1].timestamp + 1) for u, h in sorted(histories.items())]
    excludes = [{e.item_id for e in r.history} for r in requests]
    a, b = swapped.lists(requests, excludes), built.lists(requests, excludes)
    for name in ("learned_cos_last", "learned_cos_mean", "retrieval_score", "exposure_top10"):
        np.testing.assert_allclose(a.column(name), b.column(name), rtol=1e-5, atol=1e-6)
    assert a.column("exposure_top10").any()


def test_exposure_counts_the_first_stages_hubs() -> None:
    """An item near every user's taste sits in nearly everyone's top k: its exposure is the
    share of users who have not seen it; every user's k slots add up to k."""
    rng = np.random.default_rng(3)
    n_items, k = 40, 3
    ids = [f"j{n}" for n in range(n_items)]
    common = normalize(rng.normal(size=(1, 16)))  # a direction every item leans toward
    matrix = normalize(common + 0.6 * normalize(rng.normal(size=(n_items, 16))))
    matrix[0] = common[0]  # the hub: nearest to every user's mean
    vectors = ItemVectors(ids, matrix)
    tower = MeanItemsTower(vectors, n_recent=5)
    index = FlatIndex(16).build(ids, matrix)
    histories = {
        f"u{u}": [HistoryEvent(ids[int(i)], T0 + n, 5.0) for n, i in enumerate(items)]
        for u, items in enumerate(rng.choice(np.arange(1, n_items), size=(30, 5)))
    }
    histories["u0"] = [HistoryEvent("j0", T0, 5.0), *histories["u0"][1:]]  # one has seen it
    col = {i: n for n, i in enumerate(ids)}
    shares = exposure(tower, index, histories, col, k=k)
    assert shares[0] == pytest.approx(29 / 30)
    assert shares.sum() == pytest.approx(k) and shares.max() <= 1.0
    assert shares[1:].max() < shares[0]
    # a sample of users measures it the same way (here: 10 of 30 users)
    sampled = exposure(tower, index, histories, col, k=k, max_users=10, seed=1)
    assert sampled.sum() == pytest.approx(k) and sampled[0] >= 0.9


def test_taste_reads_the_users_ratings_of_the_items_nearest_the_candidate_by_text() -> None:
    """``text_rating``: the user's rating deviation on the rated items whose text is nearest
    the candidate; an item nobody has rated gets it too (what P(like) of a new arrival needs).
    Ratings of the request's own time or later are never read."""
    history = {"u0": [*_events([0], T0, rating=5.0), *_events([1], T0 + 60, rating=1.0)]}
    history["u0"] += _events([2], T0 + 120, rating=3.0)
    stage = _stage(_log(history))
    text = np.eye(N_ITEMS, dtype=np.float32)
    text[11], text[10] = text[0], text[1]  # i11 described as i0 (rated 5), i10 as i1 (rated 1)
    stage.features.text = text
    later = [*history["u0"], HistoryEvent("i9", T0 + 10 * DAY, 5.0)]
    requests = [Request("u0", later, T0 + DAY)] * 3 + [Request("u9", [], T0 + DAY)]
    x = stage.item_rows(requests, ["i11", "i10", "i8", "i11"])
    got = {n: x[:, k] for k, n in enumerate(stage.names) if n in FEATURE_GROUPS["taste"]}
    deviation = np.array([5.0, 1.0, 3.0]) - 3.0
    np.testing.assert_allclose(got["text_rating"][:3], [2 / 1.1, -2 / 1.1, 0.0], rtol=1e-5)
    np.testing.assert_allclose(got["user_rating_sd"][:3], np.std(deviation), rtol=1e-5)
    np.testing.assert_allclose(got["user_like_share"][:3], (1 + 2.5) / (3 + 5), rtol=1e-5)
    assert ((got["genre_rating"][:3] >= -2) & (got["genre_rating"][:3] <= 2)).all()
    assert all(np.isnan(v[3]) for v in got.values())  # no ratings: nothing to read
    # Without its ratings the user reads nothing nearer: the features follow the ratings.
    flat = [HistoryEvent(e.item_id, e.timestamp, 3.0) for e in history["u0"]]
    y = stage.item_rows([Request("u0", flat, T0 + DAY)], ["i11"])
    assert y[0, stage.names.index("text_rating")] == 0.0
