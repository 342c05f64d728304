"""Live events through the online user store: an accepted event shapes the user's next call
exactly as if it had been in the log, a retry changes nothing, and a store that cannot answer
costs the live events, never the call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from catalog import Catalog, Interactions, load_catalog
from catalog.history import group_histories
from catalog.text import HistoryEvent
from online import LiveEvent, UserStore
from online.users import catalog_records
from rerank.ranker.features import Request, event_arrays
from rerank.ranker.model import GBDTRanker
from retrieval.encoder import Encoder
from retrieval.redis_client import connect
from serving.recommender import Recommender
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Path, Catalog]:
    tmp = tmp_path_factory.mktemp("live")
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    assert isinstance(catalog, Catalog)
    build_ranked_stack(tmp, catalog, encoder)
    return tmp, catalog


def _with_event(catalog: Catalog, user: str, event: HistoryEvent) -> Catalog:
    extra = Interactions([user], [event.item_id], [event.timestamp], [event.rating or np.nan])
    return Catalog(
        catalog.items,
        catalog.users,
        Interactions.concat([catalog.interactions, extra]),
        catalog.source,
    )


def _store(redis_url: str, namespace: str, catalog: Catalog) -> UserStore:
    store = UserStore(redis.Redis.from_url(redis_url), namespace=namespace)
    attributes = {u: dict(x.attributes) for u, x in catalog.users.items()}
    store.write(catalog_records(group_histories(catalog.interactions), attributes))
    return store


@pytest.mark.parametrize("items_only", [False, True], ids=["with the log", "items only"])
def test_every_users_list_is_the_same_served_from_the_store(
    ranked: tuple[Path, Catalog], redis_url: str, namespace: str, items_only: bool
) -> None:
    """With or without the dataset's log in the process (`serve --user-store` loads the items
    alone: the log's totals and the exposure come with the index version)."""
    tmp, catalog = ranked
    ranker = GBDTRanker.load(tmp / "ranker")
    store = UserStore(redis.Redis.from_url(redis_url), namespace=namespace)
    store.write_log(catalog.interactions)  # what `users publish` writes
    served = load_catalog(tmp / "data", items_only=True) if items_only else catalog
    stored = Recommender(tmp / "index", served, ranker=ranker, users=store)
    plain = Recommender(tmp / "index", catalog, ranker=ranker)
    assert stored.holds_log is not items_only
    for user in sorted(plain.histories):
        a, b = stored.recommend(user, k=10), plain.recommend(user, k=10)
        assert a.served_by == b.served_by == "ranking stage"
        assert [(i.item_id, i.ranking_score, i.p_like) for i in a.items] == [
            (i.item_id, i.ranking_score, i.p_like) for i in b.items
        ], user
    assert stored.store_errors == 0


def test_the_recommender_compiles_its_rankers_trees_at_load(ranked: tuple[Path, Catalog]) -> None:
    from rerank.ranker.forest import Forest

    tmp, catalog = ranked
    ranker = GBDTRanker.load(tmp / "ranker")
    assert ranker._forest is False  # loading alone compiles nothing
    Recommender(tmp / "index", catalog, ranker=ranker)
    assert isinstance(ranker._forest, Forest)  # before any call: no call pays numba's start-up


def test_an_event_shapes_the_next_call_as_if_it_were_in_the_log(
    ranked: tuple[Path, Catalog], redis_url: str, namespace: str
) -> None:
    tmp, catalog = ranked
    ranker = GBDTRanker.load(tmp / "ranker")
    store = _store(redis_url, namespace, catalog)
    live = Recommender(tmp / "index", catalog, ranker=ranker, users=store)
    user = "u3"
    before = live.recommend(user, k=5, candidates=8)
    assert before.served_by == "ranking stage"
    # the user takes the item the ranking stage put first: a strong, visible signal
    event = HistoryEvent(
        before.items[0].item_id, int(catalog.interactions.timestamps.max()) + 60, 5.0
    )
    accepted = live.ingest([LiveEvent("evt-1", user, event)])
    assert (accepted.accepted, accepted.duplicates) == (1, 0)
    after = live.recommend(user, k=5, candidates=8)

    in_log = Recommender(tmp / "index", _with_event(catalog, user, event), ranker=ranker)
    expected = in_log.recommend(user, k=5, candidates=8)
    assert [i.item_id for i in after.items] == [i.item_id for i in expected.items]
    np.testing.assert_allclose(
        [i.ranking_score for i in after.items], [i.ranking_score for i in expected.items]
    )
    assert event.item_id not in {i.item_id for i in after.items}  # now seen
    assert [i.item_id for i in after.items] != [i.item_id for i in before.items]

    # the candidates and every feature row are the log's, at the same request time
    state, logged = live.user_state(user, None, None), in_log.user_state(user, None, None)
    assert list(state.history) == list(logged.history)
    assert live.request_time(state.history) == in_log.request_time(logged.history)
    stage = live._loaded.stage
    assert stage is not None
    at = live.request_time(state.history)
    seen = [{e.item_id for e in state.history}]
    mine = stage.lists([Request(user, state.history, at)], seen, depths={"tower": 8})
    theirs = stage.lists([Request(user, logged.history, at)], seen, depths={"tower": 8})
    np.testing.assert_array_equal(mine.cols, theirs.cols)
    np.testing.assert_allclose(mine.x, theirs.x)

    # a retried delivery changes nothing; an unknown item is refused by position
    assert live.ingest([LiveEvent("evt-1", user, event)]).duplicates == 1
    assert [i.item_id for i in live.recommend(user, k=5, candidates=8).items] == [
        i.item_id for i in after.items
    ]
    with pytest.raises(ValueError, match=r"events\[1\]\.item_id 'nope' is not in the catalog"):
        live.ingest([LiveEvent("a", user, event), LiveEvent("b", user, HistoryEvent("nope", 1))])
    # a user the build never saw is served from their live events alone
    live.ingest([LiveEvent("evt-2", "walk-in", HistoryEvent("4", event.timestamp, 5.0))])
    assert live.recommend("walk-in", k=3, candidates=8).items


@pytest.mark.parametrize(
    ("polls", "fold_every"),
    [(1, 20_000), (2, 20_000), (2, 1)],
    ids=["one read", "two reads", "two reads, counted by day"],
)
def test_an_event_reaches_every_users_item_counts_on_every_worker(
    ranked: tuple[Path, Catalog],
    redis_url: str,
    namespace: str,
    polls: int,
    fold_every: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events one worker accepts are, within the stream's poll, in another worker's item
    counts for every user, exactly as if the stage's log had held them: the popularity
    features, the item's rating mean, the popularity source and the request's clock; read in
    two polls, the second takes only its new entries; held as sorted segments or added into
    per-item day counts, the same."""
    import dataclasses
    import time

    from online.tail import POLL_S
    from rerank.ranker import live
    from rerank.ranker.candidates import CandidateStage
    from rerank.ranker.tables import StageTables

    monkeypatch.setattr(live, "FOLD_EVERY", fold_every)

    tmp, catalog = ranked
    ranker = GBDTRanker.load(tmp / "ranker")
    store = _store(redis_url, namespace, catalog)
    taker = Recommender(tmp / "index", catalog, ranker=ranker, users=store)
    other = Recommender(tmp / "index", catalog, ranker=ranker, users=store)
    loaded = other._loaded
    assert loaded.stage is not None and other.tail is not None
    item, t = "9", int(catalog.interactions.timestamps.max()) + 60
    events = [
        LiveEvent("p1", "u3", HistoryEvent(item, t, 5.0)),
        LiveEvent("p2", "u4", HistoryEvent(item, t + 1, 4.0)),
        LiveEvent("p3", "walk-in", HistoryEvent(item, t + 2, None)),
    ]
    user = "u5"  # not one of the takers
    state = other.user_state(user, None, None)
    seen = [{e.item_id for e in state.history}]
    before_at = other.request_time(state.history)
    before = other.live_stage(loaded)[0].item_rows(
        [Request(user, state.history, before_at)], [item]
    )
    if polls == 2:  # the first event read on its own, before the others arrive
        assert taker.ingest(events[:1]).accepted == 1
        time.sleep(POLL_S * 2)
        other.live_stage(loaded)
        assert other._live is not None and other._live.events.count == 1
    assert taker.ingest(events[polls - 1 :]).accepted == 4 - polls
    time.sleep(POLL_S * 2)  # the other worker reads the stream on its next call

    stage, end = other.live_stage(loaded)
    taken = other._live
    # three entries taken, each once (a second read taking them all again would hold four)
    assert taken is not None and (taken.upto, taken.events.count) == (3, 3)
    assert (taken.events.counts is not None) == (fold_every == 1)
    assert (other.tail.count, other.tail.held) == (3, 0)  # taken, so no longer held
    at = other.request_time(state.history, end)
    assert (
        at == other.request_time(state.history) == t + 3
    )  # the clock is the newest event's, as for a log ending there
    tables = StageTables.load(other.root.version_dir(loaded.version))
    assert tables.log_cols is None  # a build's tables hold per-item counts, not the events
    col = tables.item_ids.index(item)
    log_cols, log_times, log_ratings = event_arrays(
        {i: n for n, i in enumerate(tables.item_ids)}, group_histories(catalog.interactions)
    )
    logged = CandidateStage.from_tables(
        dataclasses.replace(  # the build's log with the three events in it
            tables,
            log_cols=np.concatenate([log_cols, [col] * 3]),
            log_times=np.concatenate([log_times, [t, t + 1, t + 2]]),
            log_ratings=np.concatenate([log_ratings, [5.0, 4.0, np.nan]]),
        ),
        loaded.stage.tower,
        loaded.stage.index,
        depths=loaded.stage.depths,
        shares=loaded.stage.features.exposure,  # the build's, as the version serves it
    )
    request = Request(user, state.history, at)
    mine = stage.lists([request], seen, depths={"tower": 8, "popular": 5})
    theirs = logged.lists([request], seen, depths={"tower": 8, "popular": 5})
    np.testing.assert_array_equal(mine.cols, theirs.cols)
    np.testing.assert_allclose(mine.x, theirs.x, rtol=1e-6)
    after = stage.item_rows([request], [item])
    np.testing.assert_allclose(after, logged.item_rows([request], [item]), rtol=1e-6)
    pop_7d = stage.names.index("pop_7d")
    assert after[0, pop_7d] > before[0, pop_7d]  # three more events this week
    from serving.telemetry import ServerMetrics

    assert b"duorank_live_stream_entries 3.0" in ServerMetrics(other).exposition()
    unchanged = Recommender(tmp / "index", catalog, ranker=ranker)
    assert unchanged._loaded.stage is not None
    plain = unchanged._loaded.stage.lists([request], seen, depths={"tower": 8, "popular": 5})
    assert plain.x.shape != mine.x.shape or not np.allclose(plain.x, mine.x)


def test_a_store_that_cannot_answer_costs_live_events_not_the_call(
    ranked: tuple[Path, Catalog],
) -> None:
    tmp, catalog = ranked
    # the bounded client serving builds (redis-py's default retries back off for seconds)
    dead = UserStore(connect("redis://127.0.0.1:1", connect_timeout=0.2))
    ranker = GBDTRanker.load(tmp / "ranker")
    rec = Recommender(tmp / "index", catalog, ranker=ranker, users=dead)
    plain = Recommender(tmp / "index", catalog, ranker=ranker)
    out = rec.recommend("u3", k=5, candidates=8)
    assert [i.item_id for i in out.items] == [
        i.item_id for i in plain.recommend("u3", k=5, candidates=8).items
    ]
    assert rec.store_errors == 2  # the user's record and the events stream
    with pytest.raises(RuntimeError, match="online user store"):
        plain.ingest([LiveEvent("e", "u3", HistoryEvent("1", 1))])
