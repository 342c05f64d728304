"""The nightly fold: the live events of the online store move into the dataset exactly once.

Three steps, each safe to repeat after a crash:

1. **Plan.** Read every user's live list and write the plan (a fold id and how many of each
   user's live events it takes) to ``{ns}:fold``. Ingestion only appends, so those first
   events stay the same until step 3 removes them. The plan also says which entries of the
   events stream the dataset will hold: those up to the stream's newest id read before the
   lists (the mark), plus the few accepted while the lists were read that the lists already
   held (the late ones). A serving process counts the stream's other entries on top of the
   tables built from this dataset (:mod:`online.tail`), so no event is counted twice or missed.
2. **Dataset.** Write the dataset with the planned events appended, atomically, its manifest's
   ``source`` naming the fold id (``live_fold``), the mark (``live_mark``) and the late
   entries (``live_late``).
3. **Store.** For each planned user, atomically: their record rewritten from the new dataset,
   the folded events cut from the head of their live list. Then the stream's entries older
   than the previous fold's mark are trimmed (tables built from the last two datasets still
   find what they need there) and the plan is deleted.

A fold that finds a plan finishes it when the dataset names its id (the crash came after step
2), and starts over otherwise (the dataset never got the events). Either way no event is lost
and none is counted twice.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from catalog.history import group_histories
from catalog.model import Catalog, Interactions, User
from catalog.store import load_catalog, read_manifest, save_catalog
from catalog.text import HistoryEvent
from online.codec import UserRecord, encode
from online.users import SEEN_RETENTION_S, UserStore, newest

log = logging.getLogger(__name__)

LIVE_EVENT = "live"
"""The ``event`` column of every folded row (the dataset's own rows keep theirs)."""

_FINISH = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
end
return 1
"""
"""One user's step 3: the new record, the folded head of the live list cut off, and the seen
ids kept for the retention once nothing waits."""


def _plan_key(store: UserStore) -> str:
    return f"{store.namespace}:fold"


def fold(
    store: UserStore, data: Path, progress: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Moves every live event of ``store`` into the dataset folder ``data``.

    Events of items the dataset no longer holds are dropped (counted in ``unknown_items``).

    Returns:
        The fold's id, the events written to the dataset, the users whose live events were
        taken, the events dropped for naming unknown items, and whether it finished a fold
        cut short.

    Raises:
        catalog.DataError: ``data`` is not a dataset folder.
    """
    key = _plan_key(store)
    raw = store.client.get(key)
    if raw is not None:
        plan = json.loads(raw)
        source = read_manifest(data).get("source", {})
        if source.get("live_fold") == plan["fold_id"]:
            progress(f"finishing fold {plan['fold_id']}: the dataset already holds its events")
            written = int(source.get("live_fold_events", 0))
            return _finish(store, data, plan, written, resumed=True)
        progress(f"discarding fold {plan['fold_id']}: the dataset never got its events")
        store.client.delete(key)
    mark = store.events_mark()  # before the lists: what arrives while they are read is late
    entries = {u: store.live_entries(u) for u in sorted(store.users_with_live())}
    taken = {u: events for u, (_, events) in entries.items()}
    plan = {  # each list's whole head is cut, corrupt entries included
        "fold_id": uuid.uuid4().hex,
        "counts": {u: n for u, (n, _) in entries.items() if n},
        "taken": sum(len(events) for events in taken.values()),
        "mark": mark,
        "late": _late(store, mark, taken),
    }
    if not plan["counts"]:
        return {"fold_id": None, "events": 0, "users": 0, "unknown_items": 0, "resumed": False}
    catalog = load_catalog(data)
    plan["trim_before"] = catalog.source.get("live_mark")
    store.client.set(key, json.dumps(plan))
    rows = [(u, e) for u, events in taken.items() for _, e in events if e.item_id in catalog.items]
    extra = Interactions(
        [u for u, _ in rows],
        [e.item_id for _, e in rows],
        [e.timestamp for _, e in rows],
        [np.nan if e.rating is None else e.rating for _, e in rows],
        [-1 if e.label is None else e.label for _, e in rows],
        [LIVE_EVENT] * len(rows),
    )
    users_after = dict(catalog.users)
    for u, _ in rows:
        users_after.setdefault(u, User(u))
    folded = Catalog(
        catalog.items,
        users_after,
        Interactions.concat([catalog.interactions, extra]),
        {
            **catalog.source,
            "live_fold": plan["fold_id"],
            "live_fold_events": len(rows),
            "live_mark": plan["mark"],
            "live_late": plan["late"],
        },
        {
            **catalog.stats,
            "live_events_folded": catalog.stats.get("live_events_folded", 0) + len(rows),
        },
        catalog.tag_events,
    )
    save_catalog(folded, data)
    progress(f"fold {plan['fold_id']}: {len(rows)} events of {len(taken)} users written to {data}")
    return _finish(store, data, plan, len(rows), resumed=False)


def _late(
    store: UserStore, mark: str, taken: dict[str, list[tuple[str, HistoryEvent]]]
) -> list[str]:
    """The stream ids after ``mark`` of events the read lists already held (accepted while
    they were read): the fold takes them, so no serving process may count them again."""
    held = {(u, event_id) for u, events in taken.items() for event_id, _ in events}
    return [
        e.stream_id for e in store.events_since(mark, 1_000_000) if (e.user_id, e.event_id) in held
    ]


def _finish(
    store: UserStore, data: Path, plan: dict[str, Any], written: int, resumed: bool
) -> dict[str, Any]:
    """Step 3: every planned user's record from the dataset, their folded events cut."""
    catalog = load_catalog(data)
    histories = group_histories(catalog.interactions)
    planned = sorted(plan["counts"].items())
    for start in range(0, len(planned), 1_000):
        calls = []
        for user_id, count in planned[start : start + 1_000]:
            user = catalog.users.get(user_id, User(user_id))
            history = newest(histories.get(user_id, []), store.max_events)
            keys = tuple(store.key(user_id, p) for p in ("h", "live", "seen"))
            calls.append(
                (
                    keys,
                    (
                        encode(UserRecord(dict(user.attributes), history)),
                        int(count),
                        SEEN_RETENTION_S,
                    ),
                )
            )
        store.run_scripts(_FINISH, calls)
    if plan.get("trim_before"):
        store.trim_events(plan["trim_before"])
    store.client.delete(_plan_key(store))
    return {
        "fold_id": plan["fold_id"],
        "users": len(plan["counts"]),
        "events": written,
        "unknown_items": plan.get("taken", sum(plan["counts"].values())) - written,
        "resumed": resumed,
    }
