"""The online user store: each user's profile and newest events in Redis, and the live events
ingested since the last build.

A serving process reads one user at a time from here instead of holding every history. Keys of
one user share a hash tag, so on Redis Cluster they live on one node and one Lua script can
touch them atomically:

- ``{ns}:{<user>}:h``: the record the nightly writer put there (:mod:`online.codec`);
- ``{ns}:{<user>}:live``: the events ingested since, oldest first (a list);
- ``{ns}:{<user>}:seen``: the ids of those events, so a retried delivery is accepted once;
- ``{ns}:ids``: every user id in one sorted set, for prefix search (``ZRANGE ... BYLEX``);
- ``{ns}:events``: every accepted live event once more, in order of arrival (a stream), for
  what reads items rather than users: a serving process tails it so that the windowed counts
  and the popularity source of every user's next call count the event
  (:class:`online.tail.EventTail`); the fold trims it.

A read merges the record with the live events (one round trip); the nightly fold
(:mod:`online.folding`) moves live events into the dataset exactly once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalog.model import Interactions
from catalog.splits import temporal_order
from catalog.text import HistoryEvent
from online.codec import (
    CorruptStateError,
    UserRecord,
    decode,
    decode_event,
    encode,
    encode_arrays,
    encode_event,
    event_count,
)

log = logging.getLogger(__name__)

NAMESPACE = "duorank:users"
MAX_EVENTS = 10_000
"""Events kept per user. The tower reads the newest 50, but the seen items a list leaves out
and the history-length feature read them all, so a user's list is the one the dataset's
history gives for every user with at most this many events (all of ml-latest-small's and
ML-1M's); beyond it the oldest are dropped."""
SEEN_RETENTION_S = 7 * 86_400
"""How long a folded event's id still refuses a retried delivery."""
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

_EMPTY = (
    np.zeros(0, np.int64),
    np.zeros(0, np.float32),
    np.zeros(0, np.int8),
    np.zeros(0, np.int64),
    b"",
)
"""A record's columns with no event."""

_INGEST = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('PERSIST', KEYS[1])
  return 1
end
return 0
"""
"""Accept an event once: remember its id and append it, atomically (one user's slot)."""

_INGEST_ALL = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('PERSIST', KEYS[1])
  redis.call('XADD', KEYS[3], '*', 'u', ARGV[3], 'e', ARGV[2])
  redis.call('ZADD', KEYS[4], 0, ARGV[3])
  return 1
end
return 0
"""
"""On a single Redis, all of it in one script: the user's event, the stream's entry and the
user's id for search, atomically (a cluster keeps them in different slots)."""


@dataclass(frozen=True)
class LiveEvent:
    """One event sent after the last build: who, what, and the id that makes a retry
    harmless."""

    event_id: str
    user_id: str
    event: HistoryEvent


@dataclass(frozen=True)
class StreamEntry:
    """One accepted event as the events stream holds it: its stream id (``<ms>-<seq>``, the
    order of arrival), who, the event's id and the event."""

    stream_id: str
    user_id: str
    event_id: str
    event: HistoryEvent


def stream_order(stream_id: str) -> tuple[int, int]:
    """A stream id as a pair that sorts as Redis orders them."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Ingested:
    """What :meth:`UserStore.ingest` did with a batch."""

    accepted: int
    duplicates: int


def newest(events: Sequence[HistoryEvent], n: int) -> list[HistoryEvent]:
    """The newest ``n`` events, oldest first (a stable sort: equal times keep their order)."""
    return sorted(events, key=lambda e: e.timestamp)[-n:] if n else []


class UserStore:
    """Each user's profile and newest events, in Redis or Redis Cluster.

    Args:
        client: a ``redis.Redis`` or ``redis.cluster.RedisCluster``.
        namespace: the key prefix (letters, digits and ``_.:-``: it is used in SCAN patterns).
        max_events: events kept and read per user.
    """

    def __init__(self, client: Any, namespace: str = NAMESPACE, max_events: int = MAX_EVENTS):
        if not _NAMESPACE_RE.match(namespace):
            raise ValueError(
                f"user store namespace {namespace!r}: use 1-100 letters, digits and _.:-"
            )
        if max_events < 1:
            raise ValueError(f"max_events {max_events}: must be at least 1")
        self.client = client
        self.namespace = namespace
        self.max_events = max_events

    def key(self, user_id: str, part: str) -> str:
        """One of a user's keys (``h``, ``live`` or ``seen``); the braces make them one slot."""
        return f"{self.namespace}:{{{user_id}}}:{part}"

    # ------------------------------------------------------------------ the nightly writer
    def write(self, records: Iterable[tuple[str, UserRecord]], batch: int = 1_000) -> int:
        """Writes each user's record (its newest :attr:`max_events` events), ``batch`` users a
        round trip; returns how many users were written. Live events are left alone."""
        encoded = (
            (user_id, encode(UserRecord(r.attributes, newest(r.history, self.max_events))))
            for user_id, r in records
        )
        return self._write_encoded(encoded, batch, None)

    def write_log(
        self,
        interactions: Interactions,
        attributes: Mapping[str, Mapping[str, str]] | None = None,
        batch: int = 1_000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Writes every user of an interaction log, each with their newest :attr:`max_events`
        events in the order :func:`catalog.history.group_histories` gives them (ties too),
        and users with a profile and no event. Columns throughout, no object per event: the
        path for millions of users. Returns how many users were written; ``progress`` hears
        each batch's size."""
        attributes = attributes or {}
        order = temporal_order(interactions, 0)  # by user, then time, ties seeded
        user_of = interactions.user_ids[order]
        changes = np.r_[True, user_of[1:] != user_of[:-1]] if len(order) else np.zeros(0, bool)
        firsts = np.flatnonzero(changes).astype(np.int64)
        ends = np.r_[firsts[1:], len(order)].astype(np.int64)[: len(firsts)]
        starts = np.maximum(firsts, ends - self.max_events)
        users = [str(u) for u in user_of[firsts]]
        items, item_col = np.unique(interactions.item_ids[order], return_inverse=True)
        encoded = [str(i).encode("utf-8") for i in items]
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        if len(lengths) and int(lengths.max()) > 65_535:
            raise ValueError(f"an item id of {int(lengths.max())} bytes: at most 65535")
        times = interactions.timestamps[order]
        ratings = interactions.ratings[order]
        labels = interactions.labels[order]

        def records() -> Iterator[tuple[str, bytes]]:
            for n, user in enumerate(users):
                a, b = int(starts[n]), int(ends[n])
                c = item_col[a:b]
                yield (
                    user,
                    encode_arrays(
                        attributes.get(user, {}),
                        times[a:b],
                        ratings[a:b],
                        labels[a:b],
                        lengths[c],
                        b"".join([encoded[i] for i in c.tolist()]),
                    ),
                )
            for user in sorted(set(attributes) - set(users)):
                yield user, encode_arrays(attributes[user], *_EMPTY)

        return self._write_encoded(records(), batch, progress)

    def _write_encoded(
        self,
        records: Iterable[tuple[str, bytes]],
        batch: int,
        progress: Callable[[int], None] | None,
    ) -> int:
        written = 0
        pipe = self.client.pipeline(transaction=False)
        ids: list[str] = []
        for user_id, value in records:
            pipe.set(self.key(user_id, "h"), value)
            ids.append(user_id)
            written += 1
            if len(ids) == batch:
                self._index(pipe, ids)
                pipe.execute()
                if progress:
                    progress(len(ids))
                ids = []
        self._index(pipe, ids)
        pipe.execute()
        if progress and ids:
            progress(len(ids))
        return written

    def _index(self, pipe: Any, user_ids: Sequence[str]) -> None:
        if user_ids:
            pipe.zadd(self.ids_key, dict.fromkeys(user_ids, 0))

    @property
    def ids_key(self) -> str:
        """The sorted set of every user id (one key: on a cluster, one node holds it)."""
        return f"{self.namespace}:ids"

    # ------------------------------------------------------------------ live events
    def ingest(self, events: Sequence[LiveEvent]) -> Ingested:
        """Appends each event to its user's live list unless its id was seen before (a retry),
        and once to the events stream; one round trip for the batch on a single Redis (one
        script an event: the three writes are atomic), two on a cluster. Events are not checked
        here: the caller validates them against the catalog first."""
        if not hasattr(self.client, "get_node_from_key"):  # a single Redis
            results = self.run_scripts(
                _INGEST_ALL,
                [
                    (
                        (
                            self.key(e.user_id, "seen"),
                            self.key(e.user_id, "live"),
                            self.events_key,
                            self.ids_key,
                        ),
                        (e.event_id, encode_event(e.event_id, e.event), e.user_id),
                    )
                    for e in events
                ],
            )
            accepted = sum(int(r) for r in results)
            return Ingested(accepted, len(events) - accepted)
        results = self.run_scripts(
            _INGEST,
            [
                (
                    (self.key(e.user_id, "seen"), self.key(e.user_id, "live")),
                    (e.event_id, encode_event(e.event_id, e.event)),
                )
                for e in events
            ],
        )
        accepted = sum(int(r) for r in results)
        if accepted:  # a user the nightly build never saw becomes searchable at once
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self.ids_key, dict.fromkeys({e.user_id for e in events}, 0))
            for e, r in zip(events, results, strict=True):
                if int(r):  # the items' side: once per accepted event, in order
                    pipe.xadd(
                        self.events_key, {"u": e.user_id, "e": encode_event(e.event_id, e.event)}
                    )
            pipe.execute()
        return Ingested(accepted, len(events) - accepted)

    @property
    def events_key(self) -> str:
        """The stream of every accepted event (one key: on a cluster, one node holds it)."""
        return f"{self.namespace}:events"

    def events_since(self, after: str, count: int = 10_000) -> list[StreamEntry]:
        """The stream's entries after ``after`` (a stream id; ``0-0``: from the start), oldest
        first, up to ``count`` (corrupt entries skipped, logged)."""
        out = []
        for raw_id, fields in self.client.xrange(self.events_key, f"({after}", "+", count=count):
            sid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                user = fields[b"u"].decode("utf-8")
                event_id, event = decode_event(fields[b"e"], f"{self.events_key}[{sid}]")
            except (KeyError, UnicodeDecodeError, CorruptStateError) as exc:
                log.warning("skipped a corrupt stream entry %s: %s", sid, exc)
                continue
            out.append(StreamEntry(sid, user, event_id, event))
        return out

    def events_mark(self) -> str:
        """The id of the stream's newest entry (``0-0`` when it holds none)."""
        last = self.client.xrevrange(self.events_key, "+", "-", count=1)
        if not last:
            return "0-0"
        raw = last[0][0]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def trim_events(self, before: str) -> int:
        """Drops the stream's entries older than ``before``; returns how many."""
        return int(self.client.xtrim(self.events_key, minid=before, approximate=False))

    def run_scripts(
        self, script: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Runs ``script`` once per (keys, args), each call atomic on its keys' node: in one
        pipelined round trip on a single Redis, call by call on a cluster (its pipelines take
        no scripts). EVAL, not EVALSHA: a node that restarted holds no script."""
        if not calls:
            return []
        if not hasattr(self.client, "get_node_from_key"):  # a single Redis
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.eval(script, len(keys), *keys, *args)
            return list(pipe.execute())
        return [self.client.eval(script, len(keys), *keys, *args) for keys, args in calls]

    def live(self, user_id: str) -> list[tuple[str, HistoryEvent]]:
        """The user's live events with their ids, oldest first (corrupt entries skipped)."""
        return self.live_entries(user_id)[1]

    def live_entries(self, user_id: str) -> tuple[int, list[tuple[str, HistoryEvent]]]:
        """How many entries the user's live list holds (corrupt ones too: what a fold cuts
        from its head) and the events among them."""
        key = self.key(user_id, "live")
        values = self.client.lrange(key, 0, -1)
        return len(values), list(self._events(key, values))

    def _events(self, key: str, values: Sequence[bytes]) -> Iterator[tuple[str, HistoryEvent]]:
        for n, value in enumerate(values):
            try:
                yield decode_event(value, f"{key}[{n}]")
            except CorruptStateError as exc:
                log.warning("skipped a corrupt live event: %s", exc)

    # ------------------------------------------------------------------ serving reads
    def record(self, user_id: str) -> UserRecord | None:
        """The user's profile and newest events, live ones merged in by time; None for a user
        the store has never seen. One round trip.

        Raises:
            online.codec.CorruptStateError: the stored record is not one this store wrote.
            redis.RedisError: Redis does not answer.
        """
        h, live = self.key(user_id, "h"), self.key(user_id, "live")
        pipe = self.client.pipeline(transaction=False)
        pipe.get(h)
        pipe.lrange(live, -self.max_events, -1)
        value, recent = pipe.execute()
        if value is None and not recent:
            return None
        base = decode(value, h) if value is not None else UserRecord()
        if not recent:
            return base
        events = [*base.history, *(e for _, e in self._events(live, recent))]
        return UserRecord(base.attributes, newest(events, self.max_events))

    def search(self, prefix: str, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` user ids starting with ``prefix`` (byte order), each with how many
        events they hold (live ones included); two round trips, whatever the number of users.

        Raises:
            redis.RedisError: Redis does not answer.
        """
        low = f"[{prefix}".encode() if prefix else b"-"
        high = f"[{prefix}".encode() + b"\xff" if prefix else b"+"  # no UTF-8 byte is 0xff
        found = [
            u.decode("utf-8") if isinstance(u, bytes) else str(u)
            for u in self.client.zrange(self.ids_key, low, high, bylex=True, offset=0, num=limit)
        ]
        pipe = self.client.pipeline(transaction=False)
        for user_id in found:
            pipe.get(self.key(user_id, "h"))
            pipe.llen(self.key(user_id, "live"))
        replies = pipe.execute() if found else []
        out = []
        for n, user_id in enumerate(found):
            value, live = replies[2 * n], int(replies[2 * n + 1])
            try:
                stored = event_count(value, self.key(user_id, "h")) if value is not None else 0
            except CorruptStateError as exc:
                log.warning("user search: %s", exc)
                stored = 0
            out.append((user_id, min(stored + live, self.max_events)))
        return out

    def ids(self, batch: int = 10_000) -> Iterator[str]:
        """Every user id the store holds, in byte order, ``batch`` a round trip (what a nightly
        job lists its users from, without the dataset's log).

        Raises:
            redis.RedisError: Redis does not answer.
        """
        start = 0
        while True:
            chunk = self.client.zrange(self.ids_key, start, start + batch - 1)
            for u in chunk:
                yield u.decode("utf-8") if isinstance(u, bytes) else str(u)
            if len(chunk) < batch:
                return
            start += batch

    def users_with_live(self) -> Iterator[str]:
        """Every user holding live events (a SCAN over every node)."""
        prefix, suffix = f"{self.namespace}:{{", "}:live"
        for raw in self.client.scan_iter(match=f"{self.namespace}:*:live", count=1_000):
            key = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            if key.startswith(prefix) and key.endswith(suffix):
                yield key[len(prefix) : -len(suffix)]


def catalog_records(
    histories: Mapping[str, Sequence[HistoryEvent]], attributes: Mapping[str, Mapping[str, str]]
) -> Iterator[tuple[str, UserRecord]]:
    """Every user's record from a dataset's grouped histories and profiles (users with either)."""
    for user_id in sorted(set(histories) | set(attributes)):
        yield user_id, UserRecord(dict(attributes.get(user_id, {})), histories.get(user_id, ()))
