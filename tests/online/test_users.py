"""The online user store on a real Redis: the compact record, live events accepted once and
merged by time, and a stored value that is not a record named by its key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from catalog.text import HistoryEvent
from online.codec import CorruptStateError, UserRecord, decode, decode_event, encode, encode_event
from online.users import LiveEvent, UserStore, catalog_records


def test_the_record_round_trips_every_field_and_is_compact() -> None:
    history = [
        HistoryEvent("1", 100, 4.5, None),
        HistoryEvent("Ünïcode-42", -5, None, 1),
        HistoryEvent("x" * 200, 2**53, 0.5, 0),
    ]
    record = UserRecord({"age": "30", "country": "FR"}, history)
    value = encode(record)
    assert decode(value) == UserRecord({"age": "30", "country": "FR"}, history)
    assert decode(encode(UserRecord())) == UserRecord({}, [])
    # 15 bytes of fixed fields per event besides the id, against ~70 as JSON
    per_event = (len(encode(UserRecord({}, history * 10))) - len(encode(UserRecord()))) / 30
    assert per_event == pytest.approx(15 + sum(len(e.item_id.encode()) for e in history) / 3)
    event_id, event = decode_event(encode_event("evt-1", history[1]))
    assert (event_id, event) == ("evt-1", history[1])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "shorter than a header"),
        (b"XX" + bytes(9), "not a duorank user state"),
        (encode(UserRecord({}, [HistoryEvent("1", 1)]))[:-1], "item ids take"),
        (encode(UserRecord({}, [HistoryEvent("1", 1)]))[:20], "too short for 1 events"),
    ],
)
def test_a_value_that_is_not_a_record_is_named_by_its_key(value: bytes, message: str) -> None:
    with pytest.raises(CorruptStateError, match=rf"users:\{{u1\}}:h: .*{message}"):
        decode(value, "users:{u1}:h")


@pytest.fixture
def store(redis_url: str, namespace: str) -> UserStore:
    return UserStore(redis.Redis.from_url(redis_url), namespace=namespace, max_events=5)


def test_the_writer_keeps_each_users_newest_events(store: UserStore) -> None:
    histories = {
        "u1": [HistoryEvent(str(i), 10 * i, 4.0) for i in range(8)],
        "u2": [HistoryEvent("a", 1, None, 1)],
    }
    written = store.write(catalog_records(histories, {"u3": {"age": "20"}}), batch=2)
    assert written == 3
    u1 = store.record("u1")
    assert u1 is not None and [e.item_id for e in u1.history] == ["3", "4", "5", "6", "7"]
    assert store.record("u3") == UserRecord({"age": "20"}, [])
    assert store.record("nobody") is None


def test_live_events_are_accepted_once_and_merged_by_time(store: UserStore) -> None:
    store.write([("u1", UserRecord({"age": "20"}, [HistoryEvent("a", 10), HistoryEvent("b", 30)]))])
    batch = [
        LiveEvent("e1", "u1", HistoryEvent("c", 20, 5.0)),
        LiveEvent("e2", "u1", HistoryEvent("d", 40, None, 0)),
        LiveEvent("e3", "new", HistoryEvent("a", 50)),
    ]
    assert store.ingest(batch).accepted == 3
    again = store.ingest([*batch[:2], LiveEvent("e4", "u1", HistoryEvent("e", 45))])
    assert (again.accepted, again.duplicates) == (1, 2)  # a retried delivery changes nothing
    u1 = store.record("u1")
    assert u1 is not None and u1.attributes == {"age": "20"}
    assert [e.item_id for e in u1.history] == ["a", "c", "b", "d", "e"]  # by time
    assert [i for i, _ in store.live("u1")] == ["e1", "e2", "e4"]
    new = store.record("new")  # a user the nightly build never saw starts from live events
    assert new is not None and [e.item_id for e in new.history] == ["a"]
    assert sorted(store.users_with_live()) == ["new", "u1"]


def test_a_corrupt_stored_record_is_refused_by_key_and_a_corrupt_live_event_skipped(
    store: UserStore,
) -> None:
    store.client.set(store.key("u1", "h"), b"not a record")
    with pytest.raises(CorruptStateError, match=r"\{u1\}:h"):
        store.record("u1")
    store.client.rpush(store.key("u2", "live"), b"\x05")
    store.ingest([LiveEvent("e1", "u2", HistoryEvent("a", 1))])
    u2 = store.record("u2")
    assert u2 is not None and [e.item_id for e in u2.history] == ["a"]


def test_the_events_stream_skips_a_corrupt_entry_and_a_tail_reads_the_rest(
    store: UserStore, caplog: pytest.LogCaptureFixture
) -> None:
    from online.tail import EventTail

    tail = EventTail(store, start=store.events_mark(), poll_s=60.0)
    store.ingest([LiveEvent("e1", "u1", HistoryEvent("a", 10, 4.0))])
    store.client.xadd(store.events_key, {"u": "u2", "e": b"\x05"})  # not an event
    store.client.xadd(store.events_key, {"x": "no user"})
    store.ingest([LiveEvent("e2", "u2", HistoryEvent("b", 11))])
    assert tail.poll() == 2 and tail.poll() == 0  # the first read is due; the next waits
    items, times, ratings, _ = tail.after(tail.start)
    assert (items, times.tolist()) == (["a", "b"], [10, 11])
    assert ratings[0] == 4.0 and np.isnan(ratings[1])
    assert tail.newest == 11 and "skipped a corrupt stream entry" in caplog.text
    first = tail.entries[0].stream_id
    tail.move_start(first)  # a newer version's tables hold the first event
    assert [e.event_id for e in tail.entries] == ["e2"]
    tail.move_start("0-0")  # a rollback to tables older than every entry: read again
    assert tail.count == 0 and tail.poll(force=True) == 2


def test_a_tail_drops_what_its_reader_took_and_reads_it_again_when_needed(
    store: UserStore,
) -> None:
    """Released entries are no longer held (a worker keeps only what it has not taken); a
    reader asking for them is refused by name; a new start reads the stream again."""
    from online.tail import EventTail

    mark = store.events_mark()
    tail = EventTail(store, start=mark, poll_s=60.0)
    store.ingest([LiveEvent(f"e{n}", "u1", HistoryEvent("a", 10 + n)) for n in range(3)])
    assert tail.poll(force=True) == 3
    items, times, _, upto = tail.after(mark)
    assert (len(items), times.tolist(), upto) == (3, [10, 11, 12], 3)
    ids = [e.stream_id for e in tail.entries]
    tail.release(2)
    assert (tail.held, tail.count, tail.released) == (1, 3, 2)
    assert tail.after(mark, first=2)[1].tolist() == [12]  # positions stay the same
    with pytest.raises(ValueError, match="from position 0 were released \\(up to 2\\)"):
        tail.after(mark)
    store.ingest([LiveEvent("e3", "u1", HistoryEvent("b", 20))])
    tail.poll(force=True)
    assert tail.after(mark, first=3)[0] == ["b"] and tail.count == 4
    tail.move_start(ids[0])  # a later mark, once entries after it were dropped
    assert tail.released == 0 and tail.poll(force=True) == 3  # read again from the stream
    assert tail.after(tail.start)[1].tolist() == [11, 12, 20]


def test_the_namespace_is_checked(redis_url: str) -> None:
    with pytest.raises(ValueError, match="namespace 'a\\*b'"):
        UserStore(redis.Redis.from_url(redis_url), namespace="a*b")


def test_the_embedded_server_holds_a_store_too(embedded_redis: object, tmp_path: Path) -> None:
    client = embedded_redis.client()  # type: ignore[attr-defined]
    store = UserStore(client, namespace=f"t{tmp_path.name}")
    store.write([("u", UserRecord({}, [HistoryEvent("a", 1)]))])
    store.ingest([LiveEvent("e", "u", HistoryEvent("b", 2))])
    record = store.record("u")
    assert record is not None and [e.item_id for e in record.history] == ["a", "b"]


def test_search_finds_ids_by_prefix_with_their_event_counts(store: UserStore) -> None:
    histories = {f"user{n}": [HistoryEvent("a", t) for t in range(n % 4)] for n in range(30)}
    store.write(catalog_records(histories, {}), batch=7)
    found = store.search("user1", 50)
    assert [u for u, _ in found] == ["user1", *(f"user1{n}" for n in range(10))]
    assert dict(found)["user13"] == 1 and dict(found)["user1"] == 1
    assert len(store.search("", 5)) == 5 and store.search("nobody", 5) == []
    # a user first seen through a live event is searchable at once, live events counted
    store.ingest([LiveEvent("e", "user1-new", HistoryEvent("b", 1))])
    assert ("user1-new", 1) in store.search("user1-", 5)
    store.ingest([LiveEvent("f", "user13", HistoryEvent("b", 9))])
    assert dict(store.search("user13", 1)) == {"user13": 2}
    assert store.search("ü", 5) == []  # a prefix outside ASCII is a plain byte range
    # every id, in byte order, across round trips of any size (the batch job's list)
    everyone = sorted([*histories, "user1-new"])
    assert list(store.ids(batch=7)) == everyone == list(store.ids(batch=31))
    assert list(store.ids(batch=1)) == everyone


def test_the_columnar_writer_stores_what_the_record_writer_stores(
    store: UserStore, redis_url: str, namespace: str
) -> None:
    from catalog import Interactions
    from catalog.history import group_histories

    # ties in time (ordered as group_histories orders them), a user over max_events (5),
    # labels and missing ratings, and a user with a profile and no event
    inter = Interactions(
        ["b", "a", "a", "b", "a", "a", "a", "a", "a"],
        ["x", "ü", "y", "z", "w", "v", "u", "t", "s"],
        [5, 1, 1, 5, 2, 3, 4, 5, 6],
        [1.0, np.nan, 4.5, 2.0, 3.0, 5.0, np.nan, 1.0, 0.5],
        [-1, 1, 0, -1, -1, -1, 1, -1, -1],
    )
    profiles = {"a": {"age": "3"}, "c": {"country": "NZ"}}
    assert store.write_log(inter, profiles, batch=2) == 3
    columnar = {u: store.record(u) for u in ("a", "b", "c")}
    other = UserStore(store.client, namespace=f"{namespace}:x", max_events=5)
    other.write(catalog_records(group_histories(inter), profiles))
    assert columnar == {u: other.record(u) for u in ("a", "b", "c")}
    assert columnar["c"] == UserRecord({"country": "NZ"}, [])
    a = columnar["a"]
    assert a is not None and [e.item_id for e in a.history] == ["w", "v", "u", "t", "s"]


def test_by_default_a_heavy_users_whole_history_is_kept(redis_url: str, namespace: str) -> None:
    from catalog import Interactions

    n = 3_000  # more than any user of ml-latest-small holds
    inter = Interactions(["heavy"] * n, [str(i) for i in range(n)], list(range(n)))
    store = UserStore(redis.Redis.from_url(redis_url), namespace=namespace)
    store.write_log(inter)
    record = store.record("heavy")
    assert record is not None and len(record.history) == n  # every seen item is still known
