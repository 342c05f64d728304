"""The online user store's jobs: publish every user's state, ingest a file of live events, fold
them into the dataset. The store lives in the Redis of the settings (the embedded server
without a URL), under ``DUORANK_USERS_NAMESPACE``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from duorank.app import runtime
from duorank.settings import Settings
from online import LiveEvent, UserStore

BATCH = 1_000
"""Events or users per round trip."""


@contextlib.contextmanager
def user_store(settings: Settings) -> Iterator[UserStore]:
    """The store on the settings' Redis, closed afterwards."""
    with runtime(settings) as rt:
        yield UserStore(rt.cache.client, namespace=settings.users_namespace)


def publish_users(
    settings: Settings, data: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Writes every user of the dataset (profile and newest events) to the store; live events
    already there stay and are merged on read."""
    from catalog import load_catalog
    from catalog.progress import Progress

    catalog = load_catalog(data)
    attributes = {u: dict(x.attributes) for u, x in catalog.users.items() if x.attributes}
    users = len(set(catalog.users) | set(catalog.interactions.user_ids.tolist()))
    started = time.perf_counter()
    shown = progress is not None
    with (
        user_store(settings) as store,
        Progress("publishing users", total=users, unit="users", enabled=shown) as bar,
    ):
        written = store.write_log(catalog.interactions, attributes, BATCH, bar.update)
    seconds = time.perf_counter() - started
    if progress:
        progress(f"{written:,} users written in {seconds:.1f} s")
    return {"users": written, "seconds": seconds, "namespace": settings.users_namespace}


def read_events(path: Path, items: Any) -> list[LiveEvent]:
    """The events of a JSON-lines file, one object per line as ``POST /events`` takes them.

    Raises:
        ValueError: a line that is not such an event, or names an item ``items`` lacks,
            named by file, line and field.
    """
    from pydantic import ValidationError

    from catalog.text import HistoryEvent
    from serving.schemas import LiveEventBody

    events: list[LiveEvent] = []
    with path.open(encoding="utf-8", errors="strict") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                e = LiveEventBody.model_validate_json(line)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "line"
                raise ValueError(f"{path}:{number}: {field}: {first['msg']}") from None
            if e.item_id not in items:
                raise ValueError(f"{path}:{number}: item_id {e.item_id!r} is not in the catalog")
            event = HistoryEvent(e.item_id, e.timestamp, e.rating, e.label)
            events.append(LiveEvent(e.event_id, e.user_id, event))
    return events


def ingest_file(settings: Settings, path: Path, data: Path) -> dict[str, Any]:
    """Validates every line of ``path`` against the dataset first, then ingests them all."""
    from catalog import load_catalog

    events = read_events(path, load_catalog(data).items)
    accepted = duplicates = 0
    with user_store(settings) as store:
        for start in range(0, len(events), BATCH):
            done = store.ingest(events[start : start + BATCH])
            accepted += done.accepted
            duplicates += done.duplicates
    return {"events": len(events), "accepted": accepted, "duplicates": duplicates}


def fold_events(
    settings: Settings, data: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Moves the store's live events into the dataset folder, exactly once."""
    from online import fold

    with user_store(settings) as store:
        return fold(store, data, **({"progress": progress} if progress else {}))
