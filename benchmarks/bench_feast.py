"""`duorank bench feast`: the online user store against Feast's Redis online store, on the same
Redis, the same users and the same bytes per user.

docs/design.md weighs Feast against plain Redis structures for the user store; this measures
the part that can be measured side by side. Each synthetic user (20 events over ml-latest-small
sized item ids, half rated) is stored as the bytes `users publish` writes
(:func:`online.codec.encode`, the encoding timed with each writer); then

- **plain Redis** (:class:`online.UserStore`, what serving uses): the writer's users a second,
  and one user's read (``record``: one pipelined round trip, decoded) p50 / p95 / p99;
- **Feast** (its Python SDK, ``online_store: redis`` on the same server, a feature view of one
  ``Bytes`` field keyed by ``user_id``): ``write_to_online_store`` users a second, and one
  user's ``get_online_features(...).to_dict()`` plus the same decode, p50 / p95 / p99.

Feast is not one of duorank's dependencies (it pins its own pandas, pyarrow and protobuf
ranges): install it beside the project to run this (``pip install 'feast[redis]'``); without it
the benchmark says so and stops.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target, percentile
from catalog.text import HistoryEvent
from online import UserStore
from online.codec import UserRecord, decode, encode

EVENTS_PER_USER = 20
ITEMS = 10_000
T0 = 1_600_000_000
NAMESPACE = "bench:feast-plain"


def _records(n_users: int, seed: int) -> list[tuple[str, UserRecord]]:
    """Each synthetic user's record (both stores hold its :func:`online.codec.encode` bytes)."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        items = rng.integers(0, ITEMS, EVENTS_PER_USER)
        times = np.sort(T0 + rng.integers(0, 10**7, EVENTS_PER_USER))
        history = [
            HistoryEvent(str(int(i)), int(t), float(rng.integers(1, 11)) / 2 if n % 2 else None)
            for n, (i, t) in enumerate(zip(items, times, strict=True))
        ]
        out.append((f"user{u}", UserRecord({}, history)))
    return out


def _latency(read: Any, users: list[str]) -> dict[str, float]:
    lat = []
    for user in users:
        start = time.perf_counter()
        record = read(user)
        lat.append((time.perf_counter() - start) * 1000)
        assert record is not None and len(record.history) == EVENTS_PER_USER
    return {
        "read_p50_ms": percentile(lat, 50),
        "read_p95_ms": percentile(lat, 95),
        "read_p99_ms": percentile(lat, 99),
    }


def _feast_store(folder: Path, connection: str) -> Any:
    """A Feast repository in ``folder``: the registry on disk, the online store on Redis, one
    feature view of the user's record."""
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Bytes
    from feast.value_type import ValueType

    (folder / "feature_store.yaml").write_text(
        "project: duorank_bench\n"
        f"registry: {folder / 'registry.db'}\n"
        "provider: local\n"
        "entity_key_serialization_version: 3\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{connection}"\n'
    )
    source = folder / "users.parquet"  # a view needs a batch source; reads never touch it
    pd.DataFrame(
        {"user_id": ["user0"], "record": [b""], "event_timestamp": [datetime.now(timezone.utc)]}
    ).to_parquet(source)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="user_state",
        entities=[user],
        ttl=timedelta(days=3650),
        schema=[Field(name="record", dtype=Bytes)],
        source=FileSource(path=str(source), timestamp_field="event_timestamp"),
        online=True,
    )
    store = FeatureStore(repo_path=str(folder))
    store.apply([user, view])
    return store


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Both stores on the Redis of ``ctx.redis_url`` (Feast connects by host and port, so a
    TCP Redis both reach; the benchmark's keys are deleted at the end)."""
    if not ctx.redis_url or not ctx.redis_url.startswith("redis://"):
        raise RuntimeError(
            "bench feast needs a redis:// URL that Feast and the store both reach "
            "(DUORANK_REDIS_URL, or --redis-url with python -m benchmarks.bench_feast)"
        )
    try:
        import feast
        import pandas as pd
    except ImportError as exc:
        raise RuntimeError(
            "bench feast needs Feast beside the project: pip install 'feast[redis]'"
        ) from exc
    import redis

    n_users, reads = (2_000, 500) if quick else (50_000, 5_000)
    records = _records(n_users, seed=0)
    users = [f"user{int(u)}" for u in np.random.default_rng(1).integers(0, n_users, reads)]
    url = ctx.redis_url
    client = redis.Redis.from_url(url)
    host, port, db = _address(url)
    with tempfile.TemporaryDirectory(prefix="duorank-feast-") as tmp:
        plain = UserStore(client, namespace=NAMESPACE)
        store = None
        try:
            started = time.perf_counter()
            plain.write(records)
            plain_write_s = time.perf_counter() - started

            (Path(tmp) / "repo").mkdir()
            store = _feast_store(Path(tmp) / "repo", f"{host}:{port},db={db}")
            started = time.perf_counter()
            frame = pd.DataFrame(
                {
                    "user_id": [u for u, _ in records],
                    "record": [encode(r) for _, r in records],
                    "event_timestamp": [datetime.now(timezone.utc)] * len(records),
                }
            )
            store.write_to_online_store("user_state", frame)
            feast_write_s = time.perf_counter() - started

            def feast_read(user: str) -> UserRecord:
                row = store.get_online_features(
                    features=["user_state:record"], entity_rows=[{"user_id": user}]
                ).to_dict()
                return decode(row["record"][0])

            rows: list[dict[str, Any]] = [
                {
                    "store": "plain Redis (online.UserStore)",
                    "write_users_per_s": n_users / plain_write_s,
                    **_latency(plain.record, users),
                },
                {
                    "store": "Feast, Redis online store",
                    "write_users_per_s": n_users / feast_write_s,
                    **_latency(feast_read, users),
                },
            ]
        finally:  # the benchmark's keys only: the Redis may hold others'
            ours = [*client.scan_iter(match=f"{NAMESPACE}:*", count=10_000)]
            for start in range(0, len(ours), 10_000):
                client.unlink(*ours[start : start + 10_000])
            if store is not None:
                store.teardown()  # Feast deletes its feature view's keys
    plain_row, feast_row = rows
    return BenchReport(
        name="feast",
        params={
            "quick": quick,
            "users": n_users,
            "reads": reads,
            "events_per_user": EVENTS_PER_USER,
            "feast": feast.__version__,
            "redis": "the URL given (the machine's Redis)",
        },
        results={"stores": rows},
        targets=[
            Target(
                "read p95, Feast / plain Redis (>= 1: plain is as fast or faster)",
                round(feast_row["read_p95_ms"] / plain_row["read_p95_ms"], 2),
                1.0,
            )
        ],
        table=rows,
    )


def _address(url: str) -> tuple[str, int, int]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    db = int((parsed.path or "/0").lstrip("/") or 0)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379, db


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.bench_feast --redis-url URL [--quick]``: for an environment
    with Feast beside the project's modules, where the `duorank` CLI may not be installed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_feast")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--redis-url", required=True, help="a redis:// URL (keys of its own)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args.quick, BenchContext(redis_url=args.redis_url))
    print(report.render())
    print(f"written {report.write(args.output)}")


if __name__ == "__main__":
    main()
