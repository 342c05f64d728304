"""The data model: items, users, interactions and the catalog that holds them.

Interactions are stored column-wise (numpy arrays) because every consumer (splits, training,
evaluation) works on whole columns; the row types exist for readable APIs and tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from catalog.errors import DataError

if TYPE_CHECKING:  # catalog.tags builds on Item
    from catalog.tags import DatedTags

NO_LABEL = -1
"""Stored in :attr:`Interactions.labels` where an interaction has no label."""


@dataclass(frozen=True)
class Item:
    """Something to recommend.

    Attributes:
        id: stable string id (MovieLens ids are kept as their decimal text).
        title: short human-readable name.
        description: free text, may be empty.
        genres: categories, in source order.
        tags: free-form tags, most frequent first.
        attributes: any other fields, as strings.
    """

    id: str
    title: str
    description: str = ""
    genres: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class User:
    """Someone to recommend to; the profile attributes are optional (age, gender, ...)."""

    id: str
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Interaction:
    """One event of a user with an item.

    Attributes:
        user_id: the user's id.
        item_id: the item's id.
        timestamp: seconds since the epoch.
        rating: explicit rating, if any.
        label: 1 (positive) or 0 (negative), if known.
        event: event type such as ``click`` or ``rating``, if any.
    """

    user_id: str
    item_id: str
    timestamp: int
    rating: float | None = None
    label: int | None = None
    event: str | None = None


class Interactions:
    """A column store of interactions.

    Missing ratings are NaN, missing labels are :data:`NO_LABEL`, missing events are ``""``.
    Arrays are never mutated in place by the library; :meth:`take` returns a new object.
    """

    __slots__ = ("events", "item_ids", "labels", "ratings", "timestamps", "user_ids")

    def __init__(
        self,
        user_ids: npt.ArrayLike,
        item_ids: npt.ArrayLike,
        timestamps: npt.ArrayLike,
        ratings: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        events: npt.ArrayLike | None = None,
    ) -> None:
        self.user_ids: npt.NDArray[np.str_] = _str_array(user_ids)
        self.item_ids: npt.NDArray[np.str_] = _str_array(item_ids)
        n = len(self.user_ids)
        self.timestamps: npt.NDArray[np.int64] = np.asarray(timestamps, dtype=np.int64).reshape(-1)
        self.ratings: npt.NDArray[np.float32] = (
            np.full(n, np.nan, dtype=np.float32)
            if ratings is None
            else np.asarray(ratings, dtype=np.float32).reshape(-1)
        )
        self.labels: npt.NDArray[np.int8] = (
            np.full(n, NO_LABEL, dtype=np.int8)
            if labels is None
            else np.asarray(labels, dtype=np.int8).reshape(-1)
        )
        self.events: npt.NDArray[np.str_] = (
            np.full(n, "", dtype="<U1") if events is None else _str_array(events)
        )
        for name in ("item_ids", "timestamps", "ratings", "labels", "events"):
            if len(getattr(self, name)) != n:
                raise DataError(
                    f"column length {len(getattr(self, name))} differs from user_ids length {n}",
                    column=name,
                )

    @classmethod
    def from_rows(cls, rows: Sequence[Interaction]) -> Interactions:
        """Builds the column store from row objects (convenient in tests and small tools)."""
        return cls(
            [r.user_id for r in rows],
            [r.item_id for r in rows],
            [r.timestamp for r in rows],
            [np.nan if r.rating is None else r.rating for r in rows],
            [NO_LABEL if r.label is None else r.label for r in rows],
            [r.event or "" for r in rows],
        )

    def __len__(self) -> int:
        return len(self.user_ids)

    def __iter__(self) -> Iterator[Interaction]:
        for i in range(len(self)):
            yield self.row(i)

    def row(self, i: int) -> Interaction:
        """Returns interaction ``i`` as a row object."""
        rating = float(self.ratings[i])
        label = int(self.labels[i])
        return Interaction(
            user_id=str(self.user_ids[i]),
            item_id=str(self.item_ids[i]),
            timestamp=int(self.timestamps[i]),
            rating=None if np.isnan(rating) else rating,
            label=None if label == NO_LABEL else label,
            event=str(self.events[i]) or None,
        )

    def take(self, index: npt.ArrayLike) -> Interactions:
        """Returns the rows selected by an integer index or boolean mask, in that order."""
        idx = np.asarray(index)
        return Interactions(
            self.user_ids[idx],
            self.item_ids[idx],
            self.timestamps[idx],
            self.ratings[idx],
            self.labels[idx],
            self.events[idx],
        )

    @staticmethod
    def concat(parts: Sequence[Interactions]) -> Interactions:
        """Concatenates several stores, keeping order."""
        if not parts:
            return Interactions([], [], [])
        return Interactions(
            np.concatenate([p.user_ids for p in parts]),
            np.concatenate([p.item_ids for p in parts]),
            np.concatenate([p.timestamps for p in parts]),
            np.concatenate([p.ratings for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.events for p in parts]),
        )

    @property
    def has_ratings(self) -> bool:
        """True when at least one interaction carries a rating."""
        return bool(len(self)) and not bool(np.isnan(self.ratings).all())

    def with_labels(self, labels: npt.ArrayLike) -> Interactions:
        """Returns a copy with the given labels column."""
        return Interactions(
            self.user_ids, self.item_ids, self.timestamps, self.ratings, labels, self.events
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Interactions):
            return NotImplemented
        return (
            np.array_equal(self.user_ids, other.user_ids)
            and np.array_equal(self.item_ids, other.item_ids)
            and np.array_equal(self.timestamps, other.timestamps)
            and np.array_equal(self.ratings, other.ratings, equal_nan=True)
            and np.array_equal(self.labels, other.labels)
            and np.array_equal(self.events, other.events)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Interactions(n={len(self)})"


def _str_array(values: npt.ArrayLike) -> npt.NDArray[np.str_]:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype="<U1")
    if arr.dtype.kind != "U":
        arr = arr.astype(str)
    return arr.reshape(-1)


@dataclass
class Catalog:
    """A dataset: the items, the users and their interactions.

    Attributes:
        items: items by id, in a stable order (the source's order).
        users: users by id, in a stable order.
        interactions: all interactions, in the source's order.
        source: where the data came from (loader name, path, layout).
        stats: counts gathered while loading (skipped rows, unknown ids, ...).
        tag_events: when each item tag was written, where the source says (MovieLens
            ``tags.csv``); the items' ``tags`` hold them all, :meth:`items_as_of` only the
            ones written before a time.
    """

    items: dict[str, Item]
    users: dict[str, User]
    interactions: Interactions
    source: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    tag_events: DatedTags | None = None

    def items_as_of(self, at: int | None) -> dict[str, Item]:
        """The items as they were known at ``at`` (seconds; None: now): dated tags written
        before it only (:mod:`catalog.tags`); title, genres, description and undated tags are
        known from the item's release."""
        if self.tag_events is None:
            return dict(self.items)
        return self.tag_events.items_as_of(self.items, at)

    def as_of(self, at: int | None) -> Catalog:
        """This catalog with its items' text as of ``at`` (:meth:`items_as_of`); the
        interactions are unchanged (a split cuts them)."""
        return replace(self, items=self.items_as_of(at))

    def summary(self) -> dict[str, int]:
        """The three headline counts, as recorded in a dataset manifest."""
        return {
            "users": len(self.users),
            "items": len(self.items),
            "interactions": len(self.interactions),
        }

    def item(self, item_id: str) -> Item:
        """Returns one item.

        Raises:
            KeyError: naming the unknown id.
        """
        try:
            return self.items[item_id]
        except KeyError:
            raise KeyError(f"unknown item id {item_id!r}") from None
