"""The nightly fold moves live events into the dataset exactly once, whenever it is cut short,
on a single Redis and on a Redis Cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

import online.folding as fold_module
from catalog import Catalog, load_catalog, save_catalog
from catalog.history import group_histories
from catalog.text import HistoryEvent
from online import LiveEvent, UserStore, fold
from online.users import catalog_records
from tests.conftest import tiny_catalog
from tests.live import Cluster


def _dataset(tmp_path: Path, n_users: int = 3) -> tuple[Path, Catalog]:
    catalog = tiny_catalog(n_items=10, n_users=n_users, per_user=4)
    assert isinstance(catalog, Catalog)
    save_catalog(catalog, tmp_path / "data")
    return tmp_path / "data", catalog


def _publish(store: UserStore, catalog: Catalog) -> None:
    attributes = {u: dict(user.attributes) for u, user in catalog.users.items()}
    store.write(catalog_records(group_histories(catalog.interactions), attributes))


EVENTS = [
    LiveEvent("e1", "u0", HistoryEvent("7", 10_000, 5.0)),
    LiveEvent("e2", "u0", HistoryEvent("8", 10_001, None, 1)),
    LiveEvent("e3", "newcomer", HistoryEvent("1", 10_002, 3.0)),
    LiveEvent("e4", "u1", HistoryEvent("gone", 10_003, 4.0)),  # no longer in the catalog
]


def _check_folded_once(store: UserStore, data: Path, before: Catalog) -> None:
    after = load_catalog(data)
    assert len(after.interactions) == len(before.interactions) + 3
    live_rows = after.interactions.events == "live"
    assert sorted(
        zip(
            after.interactions.user_ids[live_rows],
            after.interactions.item_ids[live_rows],
            strict=True,
        )
    ) == [
        ("newcomer", "1"),
        ("u0", "7"),
        ("u0", "8"),
    ]
    assert "newcomer" in after.users
    assert list(store.users_with_live()) == []
    u0 = store.record("u0")
    assert u0 is not None and [e.item_id for e in u0.history][-2:] == ["7", "8"]
    assert u0.history == group_histories(after.interactions)["u0"]  # no event twice
    # a retried delivery of a folded event is still refused
    assert store.ingest(EVENTS[:1]).duplicates == 1
    assert fold(store, data)["events"] == 0


def _fold_crashing_in(
    monkeypatch: pytest.MonkeyPatch, step: str, error: BaseException, store: UserStore, data: Path
) -> None:
    """A fold that dies with ``error`` where it calls ``step``."""

    def crash(*_: Any, **__: Any) -> Any:
        raise error

    with monkeypatch.context() as m:
        m.setattr(fold_module, step, crash)
        with pytest.raises(type(error)):
            fold(store, data)


@pytest.fixture
def store(redis_url: str, namespace: str) -> UserStore:
    return UserStore(redis.Redis.from_url(redis_url), namespace=namespace)


def test_a_fold_moves_every_live_event_into_the_dataset_once(
    store: UserStore, tmp_path: Path
) -> None:
    data, catalog = _dataset(tmp_path)
    _publish(store, catalog)
    assert store.ingest(EVENTS).accepted == 4
    out = fold(store, data)
    assert (out["events"], out["unknown_items"], out["users"]) == (3, 1, 3)
    assert load_catalog(data).source["live_fold"] == out["fold_id"]
    _check_folded_once(store, data, catalog)


def test_a_fold_cut_short_after_the_dataset_finishes_without_counting_twice(
    store: UserStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, catalog = _dataset(tmp_path)
    _publish(store, catalog)
    store.ingest(EVENTS)

    _fold_crashing_in(monkeypatch, "_finish", KeyboardInterrupt(), store, data)  # killed
    store.ingest([LiveEvent("e5", "u2", HistoryEvent("3", 10_010))])  # arrives in between
    resumed = fold(store, data)
    assert resumed["resumed"] is True  # the plan's events, kept whole
    assert (resumed["events"], resumed["unknown_items"]) == (3, 1)
    assert [i for i, _ in store.live("u2")] == ["e5"]  # the later event waits for the next
    store.client.delete(store.key("u2", "live"))
    _check_folded_once(store, data, catalog)


def test_a_fold_cut_short_before_the_dataset_starts_over(
    store: UserStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, catalog = _dataset(tmp_path)
    _publish(store, catalog)
    store.ingest(EVENTS)

    _fold_crashing_in(monkeypatch, "save_catalog", OSError("disk full"), store, data)
    assert len(load_catalog(data).interactions) == len(catalog.interactions)
    out = fold(store, data)
    assert (out["events"], out["unknown_items"], out["resumed"]) == (3, 1, False)
    _check_folded_once(store, data, catalog)


@pytest.mark.slow
def test_the_store_and_the_fold_work_on_a_redis_cluster(tmp_path: Path) -> None:
    from redis.cluster import RedisCluster

    from retrieval.redis_client import connect

    data, catalog = _dataset(tmp_path, n_users=16)
    with Cluster.running(tmp_path / "cluster") as cluster:
        client = connect(cluster.url)
        assert isinstance(client, RedisCluster)
        store = UserStore(client, namespace="t")
        _publish(store, catalog)
        assert min(cluster.keys_per_node()) > 0  # the users spread over the nodes
        assert store.ingest(EVENTS).accepted == 4
        u0 = store.record("u0")
        assert u0 is not None and [e.item_id for e in u0.history][-2:] == ["7", "8"]
        assert fold(store, data)["events"] == 3
        _check_folded_once(store, data, catalog)


def test_a_corrupt_live_entry_is_cut_with_the_fold_and_nothing_folds_twice(
    store: UserStore, tmp_path: Path
) -> None:
    data, catalog = _dataset(tmp_path)
    _publish(store, catalog)
    store.client.rpush(store.key("u0", "live"), b"\x05")  # a corrupt head
    store.ingest(EVENTS[:2])
    out = fold(store, data)
    assert (out["events"], out["unknown_items"]) == (2, 0)
    assert store.client.llen(store.key("u0", "live")) == 0
    assert fold(store, data)["events"] == 0  # the second event is not folded again
    assert (load_catalog(data).interactions.events == "live").sum() == 2


def test_the_events_stream_holds_what_the_folded_dataset_does_not(
    store: UserStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a fold, the stream's entries after the dataset's mark, less its late ones, are
    exactly the accepted events the dataset lacks, even for an event accepted while the fold
    read the lists; the next fold trims what two datasets hold."""
    from online.tail import EventTail

    data, catalog = _dataset(tmp_path)
    _publish(store, catalog)
    store.ingest([*EVENTS[:2], LiveEvent("e0", "u2", HistoryEvent("2", 9_999, 1.0))])
    during = LiveEvent("e5", "u2", HistoryEvent("3", 10_004, 2.0))
    after = LiveEvent("e6", "u0", HistoryEvent("4", 10_005, 4.0))
    reads = store.live_entries

    def read_then_ingest(user_id: str) -> Any:
        out = reads(user_id)
        if user_id == "u0":  # accepted after the mark, before u2's list is read: it is folded
            store.ingest([during])
        return out

    with monkeypatch.context() as m:
        m.setattr(store, "live_entries", read_then_ingest)
        fold(store, data)
    store.ingest([after])
    source = load_catalog(data).source
    tail = EventTail(store)
    tail.poll(force=True)
    assert tail.count == 5  # every accepted event, in order of arrival
    items, times, ratings, _ = tail.after(source["live_mark"], source["live_late"])
    assert len(source["live_late"]) == 1  # e5
    assert (items, times.tolist(), ratings.tolist()) == (["4"], [10_005], [4.0])
    folded = load_catalog(data).interactions
    assert {("u2", "3"), ("u0", "7")} <= set(
        zip(folded.user_ids.tolist(), folded.item_ids.tolist(), strict=True)
    )
    # the next fold trims the entries older than this fold's mark, keeps the rest
    fold(store, data)
    assert [e.event_id for e in store.events_since("0-0")] == ["e0", "e5", "e6"]
