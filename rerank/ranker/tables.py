"""What the ranking stage's sources and features read, fitted on one log, saved as one unit.

The nightly index build fits these tables on the dataset's interactions and saves them inside
the index version (``stage.npz`` and ``stage.json``, checksummed with the index and the tower
and published with them), so serving swaps index, tower and tables together and never fits
ALS at start-up. Training fits the same tables on its own logs (:mod:`rerank.ranker.stacking`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from catalog.model import Item
from catalog.text import HistoryEvent
from rerank.ranker.features import event_arrays
from retrieval.sources import CoVisitationSource, FactorSource
from retrieval.vectors import ItemVectors

Floats = npt.NDArray[np.float32]
ARRAYS = "stage.npz"
SPEC = "stage.json"
FORMAT = "duorank.stage/1"
POPULAR_WINDOW = 30 * 86_400
"""Seconds of the recent-popularity source's window."""


@dataclass(frozen=True)
class ALSParams:
    """The factor source's settings. The defaults are what the ALS baseline's grid chose on
    ml-latest-small's validation split (`duorank eval`), and what `train ranker` and the
    evaluation's ranking stage both use."""

    factors: int = 32
    regularization: float = 0.01
    alpha: float = 10.0
    iterations: int = 20
    seed: int = 0


@dataclass
class StageTables:
    """Every table of one log, rows in ``item_ids`` order.

    Attributes:
        item_ids: the catalog's item ids.
        covisit: (items, items) co-visitation (window 5, hubs discounted).
        users_of: (items, users) binary: who interacted with what (kNN cosines).
        als_factors: (items, factors) ALS item factors.
        als: the ALS settings.
        log_cols, log_times, log_ratings: every event's item row, time and rating (NaN: none).
        text: (items, d) text vectors (zero rows for items without text), or None.
        genres: (items, genres) binary.
    """

    item_ids: list[str]
    covisit: sp.csr_matrix
    users_of: sp.csr_matrix
    als_factors: Floats
    als: ALSParams
    log_cols: npt.NDArray[np.int64]
    log_times: npt.NDArray[np.int64]
    log_ratings: npt.NDArray[np.float64]
    text: Floats | None
    genres: sp.csr_matrix

    @classmethod
    def fit(
        cls,
        items: Mapping[str, Item],
        histories: Mapping[str, Sequence[HistoryEvent]],
        text_vectors: ItemVectors | None = None,
        als: ALSParams | None = None,
    ) -> StageTables:
        """Fits every table on ``histories`` (time-ordered events per user)."""
        als = als or ALSParams()
        item_ids = list(items)
        col = {i: n for n, i in enumerate(item_ids)}
        covisit = CoVisitationSource.build(item_ids, histories).table
        factors = FactorSource.build(
            item_ids,
            histories,
            factors=als.factors,
            reg=als.regularization,
            alpha=als.alpha,
            iterations=als.iterations,
            seed=als.seed,
        ).factors
        user_pos = {u: n for n, u in enumerate(sorted(histories))}
        pairs = np.array(
            sorted(
                {
                    (col[e.item_id], user_pos[u])
                    for u, h in histories.items()
                    for e in h
                    if e.item_id in col
                }
            ),
            dtype=np.int64,
        ).reshape(-1, 2)
        users_of = sp.csr_matrix(
            (np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])),
            shape=(len(item_ids), len(user_pos)),
        )
        log_cols, log_times, log_ratings = event_arrays(col, histories)
        text = None
        if text_vectors is not None:
            r = text_vectors.rows(item_ids)
            text = np.where(r[:, None] >= 0, text_vectors.matrix[np.maximum(r, 0)], 0.0).astype(
                np.float32
            )
        genre_names = sorted({g for it in items.values() for g in it.genres})
        gcol = {g: n for n, g in enumerate(genre_names)}
        g_rows = np.array(
            [(n, gcol[g]) for n, i in enumerate(item_ids) for g in items[i].genres],
            dtype=np.int64,
        ).reshape(-1, 2)
        genres = sp.csr_matrix(
            (np.ones(len(g_rows), np.float32), (g_rows[:, 0], g_rows[:, 1])),
            shape=(len(item_ids), max(len(genre_names), 1)),
        )
        return cls(
            item_ids,
            covisit,
            users_of,
            np.asarray(factors, dtype=np.float32),
            als,
            log_cols,
            log_times,
            log_ratings,
            text,
            genres,
        )

    def save(self, folder: str | Path) -> list[Path]:
        """Writes ``stage.npz`` and ``stage.json`` into ``folder``; returns both paths."""
        out = Path(folder)
        arrays: dict[str, Any] = {
            "als_factors": self.als_factors,
            "log_cols": self.log_cols,
            "log_times": self.log_times,
            "log_ratings": self.log_ratings,
        }
        if self.text is not None:
            arrays["text"] = self.text
        for name in ("covisit", "users_of", "genres"):
            m = getattr(self, name).tocsr()
            arrays.update(
                {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr}
            )
        shapes = {n: list(getattr(self, n).shape) for n in ("covisit", "users_of", "genres")}
        with (out / ARRAYS).open("wb") as handle:
            np.savez(handle, **arrays)
        spec = {
            "format": FORMAT,
            "item_ids": self.item_ids,
            "als": asdict(self.als),
            "shapes": shapes,
            "events": len(self.log_cols),
            "text": self.text is not None,
        }
        (out / SPEC).write_text(json.dumps(spec, sort_keys=True))
        return [out / ARRAYS, out / SPEC]

    @classmethod
    def load(cls, folder: str | Path) -> StageTables:
        """Reads what :meth:`save` wrote.

        Raises:
            ValueError: the files are of another format or do not fit together.
        """
        path = Path(folder)
        spec = json.loads((path / SPEC).read_text())
        if spec.get("format") != FORMAT:
            raise ValueError(f"{path / SPEC}: format {spec.get('format')!r}, expected {FORMAT}")
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}

        def csr(name: str) -> sp.csr_matrix:
            return sp.csr_matrix(
                (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
                shape=tuple(spec["shapes"][name]),
            )

        tables = cls(
            list(spec["item_ids"]),
            csr("covisit"),
            csr("users_of"),
            arrays["als_factors"],
            ALSParams(**spec["als"]),
            arrays["log_cols"],
            arrays["log_times"],
            arrays["log_ratings"],
            arrays.get("text"),
            csr("genres"),
        )
        n = len(tables.item_ids)
        if tables.covisit.shape != (n, n) or len(tables.als_factors) != n:
            raise ValueError(f"{path}: tables of {n} items do not fit together")
        return tables
