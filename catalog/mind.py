"""MIND (Microsoft News Dataset, Wu et al., ACL 2020): news whose text carries the taste.

A MIND folder (``MINDsmall_train``, ``MINDlarge_dev``, ...) holds two tab-separated files
without a header:

- ``news.tsv``: news id, category, subcategory, title, abstract, URL, title entities, abstract
  entities. An item is its title, its abstract (the description) and its category and
  subcategory (its genres).
- ``behaviors.tsv``: impression id, user id, time (``11/15/2019 8:55:22 AM``, UTC), the
  user's click history before the log (space-separated news ids, oldest first) and the
  impression (``N123-1 N456-0``: each news shown, clicked 1 or not 0).

Every click becomes an event at the impression's time (label 1). With ``negatives``, every
shown news the user passed on becomes a label-0 event too: a real negative for a point-wise
model (the user saw it and passed). They are off by default because the ranking protocols hold
out each user's last *event* and the towers learn from every event in a history: with non-clicks
among them, a held-out target could be a news the user did not click.

The history clicks have no time; they become clicks just before the user's first impression,
in their order, so every split keeps them in the past. A user's history repeats on each of
their impressions: it is read once, from the first.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from catalog.errors import DataError
from catalog.model import Catalog, Interactions, Item, User
from catalog.readers import BadRowPolicy, iter_delimited, no_interactions

log = logging.getLogger(__name__)

NEWS_FIELDS = 8
BEHAVIOUR_FIELDS = 5
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def _time(value: str, path: Path, line: int) -> int:
    try:
        when = datetime.strptime(value.strip(), TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise DataError(
            f"expected a time like 11/15/2019 8:55:22 AM ({TIME_FORMAT})",
            path=path,
            line=line,
            column="time",
            value=value,
        ) from None
    return int(when.timestamp())


def _news(path: Path, policy: BadRowPolicy) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for line, fields in iter_delimited(path, sep="\t", encoding="utf-8", n_fields=NEWS_FIELDS):
        try:
            if not fields:
                raise DataError(
                    f"expected {NEWS_FIELDS} tab-separated fields", path=path, line=line
                )
            news_id, category, subcategory, title, abstract = (f.strip() for f in fields[:5])
            if not news_id:
                raise DataError("empty news id", path=path, line=line, column="news_id")
            if news_id in items:
                raise DataError(
                    "duplicate news id", path=path, line=line, column="news_id", value=news_id
                )
        except DataError as exc:
            policy.handle(exc)
            continue
        genres = tuple(g for g in (category, subcategory) if g)
        items[news_id] = Item(news_id, title, abstract, genres)
    return items


def load_mind(path: str | Path, *, negatives: bool = False, skip_bad: bool = False) -> Catalog:
    """Loads a MIND folder (``news.tsv`` and ``behaviors.tsv``).

    Args:
        path: the folder.
        negatives: keep each impression's non-clicks as label-0 events.
        skip_bad: skip and count malformed rows instead of raising.

    Raises:
        DataError: a missing file, or a malformed row (file, line, field and value) without
            ``skip_bad``.
    """
    root = Path(path)
    news, behaviors = root / "news.tsv", root / "behaviors.tsv"
    policy = BadRowPolicy(skip_bad=skip_bad)
    items = _news(news, policy)
    if not items:
        raise DataError("no news to import", path=news)
    users: list[str] = []
    rated: list[str] = []
    times: list[int] = []
    labels: list[int] = []
    events: list[str] = []
    first: dict[str, tuple[int, list[str]]] = {}  # user -> first impression time, history
    unknown = 0
    for line, fields in iter_delimited(
        behaviors, sep="\t", encoding="utf-8", n_fields=BEHAVIOUR_FIELDS
    ):
        try:
            if not fields:
                raise DataError(
                    f"expected {BEHAVIOUR_FIELDS} tab-separated fields", path=behaviors, line=line
                )
            user = fields[1].strip()
            if not user:
                raise DataError("empty user id", path=behaviors, line=line, column="user_id")
            when = _time(fields[2], behaviors, line)
            shown: list[tuple[str, int]] = []
            for pair in fields[4].split():
                news_id, _, flag = pair.rpartition("-")
                if not news_id or flag not in ("0", "1"):
                    raise DataError(
                        "expected NEWSID-1 or NEWSID-0",
                        path=behaviors,
                        line=line,
                        column="impressions",
                        value=pair,
                    )
                shown.append((news_id, int(flag)))
        except DataError as exc:
            policy.handle(exc)
            continue
        if user not in first or when < first[user][0]:
            first[user] = (when, fields[3].split())
        for shown_id, clicked in shown:
            if shown_id not in items:
                unknown += 1
                continue
            if clicked or negatives:
                users.append(user)
                rated.append(shown_id)
                times.append(when)
                labels.append(clicked)
                events.append("click" if clicked else "impression")
    for user, (start, history) in first.items():
        known = [n for n in history if n in items]
        unknown += len(history) - len(known)
        for k, news_id in enumerate(known):  # before the first impression, in order
            users.append(user)
            rated.append(news_id)
            times.append(start - len(known) + k)
            labels.append(1)
            events.append("history")
    if not users:
        raise no_interactions(
            behaviors, parsed=len(first), skipped=policy.skipped.get(behaviors.name, 0)
        )
    if unknown:
        log.warning("%d clicks or impressions name news missing from news.tsv: skipped", unknown)
    interactions = Interactions(
        np.array(users, dtype=str),
        np.array(rated, dtype=str),
        times,
        np.full(len(users), np.nan, dtype=np.float32),
        np.array(labels, dtype=np.int8),
        np.array(events, dtype=str),
    )
    stats = {
        "skipped_rows": policy.total_skipped,
        "unknown_item_interactions": unknown,
        **{f"skipped_rows[{name}]": n for name, n in policy.skipped.items()},
    }
    return Catalog(
        items,
        {u: User(u) for u in sorted(first)},
        interactions,
        source={"loader": "mind", "path": str(root.resolve()), "negatives": negatives},
        stats=stats,
    )
