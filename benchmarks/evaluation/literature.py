"""The published protocols `duorank eval --protocol` can reproduce, next to duorank's own.

``duorank``: the dataset as imported; per-user temporal leave-one-out, ties in time broken by
a seeded random order.

``sasrec``: the MovieLens-1M of the SASRec paper (Kang and McAuley, 2018), which BERT4Rec,
SASRec+ and gSASRec evaluate on: every rating is an interaction; users and items with fewer
than 5 ratings are dropped in one pass over the raw counts (SASRec's ``DataProcessing.py``:
an event is kept when its user and its item each have at least 5); each user's events in time
order with ties in the file's order (that script's stable sort). The split is the same
leave-one-out (last event: test, the one before: validation) with every remaining item ranked
and the user's earlier items left out, as SASRec+ evaluates (``filter_seen``). Ties are made
strict by moving a tied event one second after the one before it, so every split of the
project (whatever its seed) keeps the file's order: the held-out events are the papers'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from catalog.model import Catalog, Interactions

MIN_EVENTS = 5
"""The SASRec preprocessing's bound on ratings per user and per item."""


@dataclass(frozen=True)
class Protocol:
    """How `duorank eval` prepares a dataset and what its report says about it."""

    name: str
    description: str
    min_events: int = 0  # users and items with fewer raw events are dropped (0: none)
    file_order_ties: bool = False  # ties in a user's time keep the file's order


PROTOCOLS = {
    "duorank": Protocol(
        "duorank",
        "per-user temporal leave-one-out; ties in time broken by a seeded random order",
    ),
    "sasrec": Protocol(
        "sasrec",
        "the SASRec/BERT4Rec papers' leave-one-out: users and items with fewer than 5 ratings "
        "dropped in one pass over the raw counts, each user's events in time order with ties "
        "in the file's order, the last event held out for test and the one before for "
        "validation, every remaining item ranked, the user's earlier items left out",
        min_events=MIN_EVENTS,
        file_order_ties=True,
    ),
}


def protocol(name: str) -> Protocol:
    """The protocol called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def file_order_ties(interactions: Interactions) -> tuple[Interactions, int]:
    """The same events with each user's ties in time made strict in the file's order: a tied
    event moves to one second after the one before it (and so may the ones after it, until a
    gap takes the shift). Returns the events and how many moved."""
    n = len(interactions)
    if n == 0:
        return interactions, 0
    order = np.lexsort((np.arange(n), interactions.timestamps, interactions.user_ids))
    users = interactions.user_ids[order]
    times = interactions.timestamps[order].copy()
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    for i in range(1, n):  # sequential by nature: a shift carries to the next tie
        if not new_user[i] and times[i] <= times[i - 1]:
            times[i] = times[i - 1] + 1
    out = interactions.timestamps.copy()
    out[order] = times
    moved = int((out != interactions.timestamps).sum())
    return (
        Interactions(
            interactions.user_ids,
            interactions.item_ids,
            out,
            interactions.ratings,
            interactions.labels,
            interactions.events,
        ),
        moved,
    )


def prepare(catalog: Catalog, name: str) -> tuple[Catalog, dict[str, Any]]:
    """The catalog as protocol ``name`` evaluates it, and what was done (for the report).

    Raises:
        ValueError: an unknown protocol.
    """
    spec = protocol(name)
    done: dict[str, Any] = {"name": spec.name, "description": spec.description}
    events = catalog.interactions
    if spec.min_events:
        users, user_counts = np.unique(events.user_ids, return_counts=True)
        items, item_counts = np.unique(events.item_ids, return_counts=True)
        keep_users = users[user_counts >= spec.min_events]
        keep_items = items[item_counts >= spec.min_events]
        mask = np.isin(events.user_ids, keep_users) & np.isin(events.item_ids, keep_items)
        done["dropped_events"] = int((~mask).sum())
        events = events.take(np.flatnonzero(mask))
        kept_items, kept_users = set(events.item_ids.tolist()), set(events.user_ids.tolist())
        catalog = replace(
            catalog,
            items={i: it for i, it in catalog.items.items() if i in kept_items},
            users={u: x for u, x in catalog.users.items() if u in kept_users},
        )
        done["min_events"] = spec.min_events
    if spec.file_order_ties:
        events, moved = file_order_ties(events)
        done["ties_moved"] = moved
    done["kept"] = {
        "users": len(np.unique(events.user_ids)),
        "items": len(catalog.items),
        "events": len(events),
    }
    return replace(catalog, interactions=events), done
