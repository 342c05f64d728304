"""Deterministic text rendering of items and users.

Rendered text is part of every embedding cache key, so the same inputs must give byte-identical
text: no set iteration, no locale, whitespace normalized. Each template has a fingerprint that
manifests record, so a template change is visible as a change of every key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.model import NO_LABEL, Interactions, Item, User
from catalog.thresholds import LIKE_THRESHOLD

TokenCounter = Callable[[str], int]
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def approx_tokens(text: str) -> int:
    """Counts words and punctuation marks: a lower bound on WordPiece/BPE token counts.

    Used when no tokenizer is given; pass the encoder's own counter for an exact budget.
    """
    return len(_TOKEN_RE.findall(text))


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _fingerprint(kind: str, params: Mapping[str, object]) -> str:
    blob = json.dumps({"kind": kind, **params}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ItemTextTemplate:
    """Renders an item as ``"<title>. <description>. Genres: a, b. Tags: x, y"``.

    Empty sections are left out. Genres and tags keep their stored order (tags are stored most
    frequent first), capped by ``max_genres``/``max_tags``.
    """

    max_genres: int = 8
    max_tags: int = 8
    include_description: bool = True
    max_description_chars: int = 600
    version: int = 1

    def render(self, item: Item) -> str:
        """Returns the item's text; empty when the item has neither title nor description
        (genres and tags alone do not identify an item, so such items are skipped)."""
        title = _clean(item.title).rstrip(".")
        parts = [title] if title else []
        if self.include_description and item.description:
            desc = _clean(item.description)[: self.max_description_chars].rstrip(".")
            if desc:
                parts.append(desc)
        if not parts:
            return ""
        genres = [_clean(g) for g in item.genres[: self.max_genres] if _clean(g)]
        if genres:
            parts.append("Genres: " + ", ".join(genres))
        tags = [_clean(t) for t in item.tags[: self.max_tags] if _clean(t)]
        if tags:
            parts.append("Tags: " + ", ".join(tags))
        return ". ".join(parts)

    def fingerprint(self) -> str:
        """A short hash of the template's parameters, recorded in manifests."""
        return _fingerprint("item", asdict(self))


@dataclass(frozen=True)
class HistoryEvent:
    """One past interaction as the user renderer sees it."""

    item_id: str
    timestamp: int
    rating: float | None = None
    label: int | None = None


def history_of(interactions: Interactions, index: Sequence[int]) -> list[HistoryEvent]:
    """Turns rows of an interaction store into :class:`HistoryEvent` objects."""
    out = []
    for i in index:
        rating = float(interactions.ratings[i])
        label = int(interactions.labels[i])
        out.append(
            HistoryEvent(
                str(interactions.item_ids[i]),
                int(interactions.timestamps[i]),
                None if math.isnan(rating) else rating,
                None if label == NO_LABEL else label,
            )
        )
    return out


def is_positive(event: HistoryEvent, threshold: float) -> bool | None:
    """True for a like, False for a dislike, None when unknown.

    A label wins; else a rating compared with ``threshold``; an event with neither is an
    implicit positive (a click, a view).
    """
    if event.label is not None:
        return event.label == 1
    if event.rating is not None:
        return event.rating >= threshold
    return True


def likes(interactions: Interactions, threshold: float) -> npt.NDArray[np.bool_]:
    """:func:`is_positive` for every row of an interaction store at once: a label wins, else
    the rating against ``threshold``, else (an implicit event) a like."""
    ratings = np.asarray(interactions.ratings, dtype=np.float64)
    labels = np.asarray(interactions.labels)
    with np.errstate(invalid="ignore"):
        by_rating = np.isnan(ratings) | (ratings >= threshold)
    return np.where(labels != NO_LABEL, labels == 1, by_rating)


@dataclass(frozen=True)
class UserTextTemplate:
    """Renders a user from the profile and recent history, within a token budget.

    Output: ``"Profile: age 25, gender M. Liked, most recent first: A; B. Disliked: C"``
    (with ``ratings``: ``"A (5 stars); B (4 stars)"``).
    Items are added most recent first until ``max_tokens`` would be exceeded, so the text fits
    the encoder's maximum length and the oldest history is what gets cut.
    """

    max_liked: int = 20
    max_disliked: int = 0
    max_tokens: int = 200
    like_threshold: float = LIKE_THRESHOLD
    profile_fields: tuple[str, ...] = ("age", "gender", "occupation")
    version: int = 1
    ratings: bool = False
    """Follow each title with the user's stars ("A (4.5 stars)"): how much, not only whether."""

    def render(
        self,
        user: User | None,
        history: Sequence[HistoryEvent],
        items: Mapping[str, Item],
        count_tokens: TokenCounter | None = None,
    ) -> str:
        """Returns the user's text.

        Args:
            user: the user (for the profile), or None.
            history: past interactions in any order; sorted here by time, most recent first
                (ties keep the given order).
            items: item lookup for titles; unknown ids are skipped.
            count_tokens: the encoder's token counter; :func:`approx_tokens` by default.
        """
        count = count_tokens or approx_tokens
        profile = ""
        if user is not None:
            fields = [
                f"{k} {_clean(user.attributes[k])}"
                for k in self.profile_fields
                if _clean(user.attributes.get(k, ""))
            ]
            if fields:
                profile = "Profile: " + ", ".join(fields)
        ordered = sorted(range(len(history)), key=lambda i: -history[i].timestamp)
        liked: list[str] = []
        disliked: list[str] = []
        for i in ordered:
            event = history[i]
            item = items.get(event.item_id)
            if item is None:
                continue
            positive = is_positive(event, self.like_threshold)
            title = _clean(item.title) or item.id
            if self.ratings and event.rating is not None and event.rating == event.rating:
                stars = "star" if event.rating == 1 else "stars"
                title = f"{title} ({event.rating:g} {stars})"
            if positive and len(liked) < self.max_liked:
                liked.append(title)
            elif positive is False and len(disliked) < self.max_disliked:
                disliked.append(title)

        def compose(n_liked: int, n_disliked: int) -> str:
            parts = [profile] if profile else []
            if n_liked:
                parts.append("Liked, most recent first: " + "; ".join(liked[:n_liked]))
            if n_disliked:
                parts.append("Disliked: " + "; ".join(disliked[:n_disliked]))
            return ". ".join(parts)

        n_l = n_d = 0
        # Grow both lists in step (a like, then a dislike) so the budget keeps a bit of each.
        while n_l < len(liked) or n_d < len(disliked):
            grew = False
            if n_l < len(liked) and count(compose(n_l + 1, n_d)) <= self.max_tokens:
                n_l += 1
                grew = True
            if n_d < len(disliked) and count(compose(n_l, n_d + 1)) <= self.max_tokens:
                n_d += 1
                grew = True
            if not grew:
                break
        return compose(n_l, n_d)

    def fingerprint(self) -> str:
        """A short hash of the template's parameters, recorded in manifests."""
        return _fingerprint("user", asdict(self))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> UserTextTemplate:
        """Rebuilds a template from its ``asdict`` form (JSON lists back to tuples)."""
        args: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**args)
