"""User towers: a user's state (profile, history) -> one unit vector in the item space.

A tower is a small interface (:class:`UserTower`: ``embed`` plus its own ``save``/``load``), so a
trained sequential tower plugs in without changes elsewhere.

Cold start: a user with no usable history is embedded from the profile text when the tower reads
text and a profile exists; otherwise ``embed`` returns a zero row, which means "no signal" and
callers fall back to popularity (:class:`retrieval.popularity.Popularity`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from catalog.model import Item, User
from catalog.text import HistoryEvent, UserTextTemplate, is_positive
from catalog.thresholds import LIKE_THRESHOLD
from retrieval.encoder import Encoder
from retrieval.vectors import ItemVectors, normalize

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class UserState:
    """What a tower may know about a user: id, profile attributes and past interactions."""

    user_id: str | None = None
    profile: Mapping[str, str] = field(default_factory=dict)
    history: Sequence[HistoryEvent] = ()


class UserTower(ABC):
    """user state -> unit vector (or a zero row: no signal, use popularity)."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output width (equals the item vectors' width)."""

    @abstractmethod
    def embed(self, users: Sequence[UserState]) -> Matrix:
        """A (len(users), dim) float32 matrix; rows are unit vectors or zero."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-safe parameters that, with the same dependencies, rebuild the tower."""

    def save(self, folder: str | Path) -> Path:
        """Writes ``tower.json`` (name and config)."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        path = root / "tower.json"
        path.write_text(
            json.dumps({"name": self.name, "config": self.config()}, indent=2, sort_keys=True)
        )
        return path


class HistoryTextTower(UserTower):
    """Encodes the rendered user text (profile + recent likes) through the encoder and cache."""

    name = "history_text"

    def __init__(
        self, encoder: Encoder, items: Mapping[str, Item], template: UserTextTemplate | None = None
    ) -> None:
        self.encoder = encoder
        self.items = items
        self.template = template or UserTextTemplate(
            max_tokens=min(encoder.max_seq_length, 256) - 2
        )

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def text(self, user: UserState) -> str:
        """The text this tower encodes for ``user`` (empty: nothing to encode)."""
        return self.template.render(
            User(user.user_id or "", dict(user.profile)),
            user.history,
            self.items,
            self.encoder.count_tokens,
        )

    def embed(self, users: Sequence[UserState]) -> Matrix:
        texts = [self.text(u) for u in users]
        out = np.zeros((len(users), self.dim), dtype=np.float32)
        rows = [i for i, t in enumerate(texts) if t]
        if rows:
            out[rows] = self.encoder.encode([texts[i] for i in rows])
        return out

    def config(self) -> dict[str, Any]:
        return {"template": asdict(self.template), "encoder": self.encoder.describe()}


class MeanItemsTower(UserTower):
    """Pools the vectors of the user's most recent liked items; no model call.

    Args:
        item_vectors: item id -> unit vector.
        n_recent: how many recent likes to pool.
        weighting: ``"mean"`` or ``"recency"`` (weight ``0.5 ** (age / half_life)`` where age
            0 is the most recent like).
        half_life: in events, for ``"recency"``.
        like_threshold: ratings at or above count as likes (labels win; unrated = like).
        unit_rows: ``item_vectors`` are not unit length: each row read is scaled to unit
            length (as :func:`~retrieval.vectors.normalize` would scale it; no scaled copy).
    """

    name = "mean_items"

    def __init__(
        self,
        item_vectors: ItemVectors,
        *,
        n_recent: int = 5,
        weighting: str = "mean",
        half_life: float = 5.0,
        like_threshold: float = LIKE_THRESHOLD,
        unit_rows: bool = False,
    ) -> None:
        if weighting not in ("mean", "recency"):
            raise ValueError(f"weighting must be 'mean' or 'recency', got {weighting!r}")
        if n_recent < 1:
            raise ValueError(f"n_recent must be >= 1, got {n_recent}")
        self.item_vectors = item_vectors
        self.n_recent = n_recent
        self.weighting = weighting
        self.half_life = half_life
        self.like_threshold = like_threshold
        self._scale = (  # normalize()'s scale: the norms of the float32 rows
            np.maximum(
                np.linalg.norm(np.asarray(item_vectors.matrix, np.float32), axis=-1, keepdims=True),
                1e-12,
            )
            if unit_rows
            else None
        )

    @property
    def dim(self) -> int:
        return self.item_vectors.dim

    def recent_likes(self, user: UserState) -> list[str]:
        """Ids of the user's most recent liked items known to the vectors, newest first."""
        order = sorted(range(len(user.history)), key=lambda i: -user.history[i].timestamp)
        out: list[str] = []
        for i in order:
            event = user.history[i]
            if is_positive(event, self.like_threshold) and event.item_id in self.item_vectors:
                out.append(event.item_id)
                if len(out) == self.n_recent:
                    break
        return out

    def embed(self, users: Sequence[UserState]) -> Matrix:
        out = np.zeros((len(users), self.dim), dtype=np.float32)
        for u, user in enumerate(users):
            ids = self.recent_likes(user)
            if not ids:
                continue
            rows = self.item_vectors.rows(ids)
            vecs = self.item_vectors.matrix[rows]
            if self._scale is not None:
                vecs = np.asarray(vecs, np.float32) / self._scale[rows]
            if self.weighting == "recency":
                weights = 0.5 ** (np.arange(len(ids)) / self.half_life)
                out[u] = (weights[:, None] * vecs).sum(axis=0)
            else:
                out[u] = vecs.mean(axis=0)
        return normalize(out)

    def config(self) -> dict[str, Any]:
        return {
            "n_recent": self.n_recent,
            "weighting": self.weighting,
            "half_life": self.half_life,
            "like_threshold": self.like_threshold,
        }


def load_tower(
    folder: str | Path,
    *,
    encoder: Encoder | None = None,
    items: Mapping[str, Item] | None = None,
    item_vectors: ItemVectors | None = None,
) -> UserTower:
    """Rebuilds a tower saved with :meth:`UserTower.save`, given its dependencies.

    Raises:
        ValueError: an unknown tower name or a missing dependency (named).
    """
    path = Path(folder) / "tower.json"
    spec = json.loads(path.read_text())
    name, config = spec.get("name"), spec.get("config", {})
    if name == HistoryTextTower.name:
        if encoder is None or items is None:
            raise ValueError(f"{path}: history_text needs an encoder and the items")
        return HistoryTextTower(
            encoder,
            items,
            UserTextTemplate.from_dict(config["template"]),
        )
    if name == MeanItemsTower.name:
        if item_vectors is None:
            raise ValueError(f"{path}: mean_items needs item vectors")
        return MeanItemsTower(item_vectors, **config)
    raise ValueError(f"{path}: unknown tower {name!r}")
