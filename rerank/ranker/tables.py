"""What the ranking stage's sources and features read, fitted on one log, saved as one unit.

The nightly index build fits these tables on the dataset's interactions and saves them inside
the index version (``stage.npz`` and ``stage.json``, checksummed with the index and the tower
and published with them), so serving swaps index, tower and tables together and never fits
ALS at start-up. Training fits the same tables on its own logs (:mod:`rerank.ranker.stacking`).

Every saved table is item-side and bounded per item: the co-visitation and co-occurrence rows
keep their strongest neighbours (:mod:`rerank.ranker.neighbours`), and the log is saved as the
per-item counts a request after it reads (:class:`rerank.ranker.daycounts.DayCounts`), not as
its events: a serving process's tables do not grow with the users.
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
from rerank.ranker.daycounts import DayCounts
from rerank.ranker.features import NEIGHBOURS, EventLog, LogQueries, event_arrays
from rerank.ranker.neighbours import cooccurrence_top_k, top_k_rows
from retrieval.sources import CoVisitationSource, FactorSource
from retrieval.vectors import ItemVectors

Floats = npt.NDArray[np.float32]
ARRAYS = "stage.npz"
SPEC = "stage.json"
FORMAT = "duorank.stage/2"
OLD_FORMAT = "duorank.stage/1"
"""Tables that held every event and an (items, users) matrix: read, and made item-side."""
COVISIT_NEIGHBOURS = 500
"""Items each item keeps the co-visitation weight of (its heaviest)."""
SPARSE = ("covisit", "cooccurrence", "genres")


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
        covisit: (items, items) co-visitation (window 5, hubs discounted), each row its
            :data:`COVISIT_NEIGHBOURS` heaviest.
        cooccurrence: (items, items) users two items share, each row its
            :data:`~rerank.ranker.features.NEIGHBOURS` most similar items (cosine).
        item_norm: each item's norm (square root of its users).
        als_factors: (items, factors) ALS item factors.
        als: the ALS settings.
        counts: the log's per-item answers for requests after it.
        text: (items, d) text vectors (zero rows for items without text), or None.
        genres: (items, genres) binary.
        events: the events the tables were fitted on.
        log_cols, log_times, log_ratings: every event's item row, time and rating (NaN: none)
            where the tables were fitted here (training and evaluation ask at any time); None
            when loaded from a build (serving asks after the log's end: :attr:`counts`).
    """

    item_ids: list[str]
    covisit: sp.csr_matrix
    cooccurrence: sp.csr_matrix
    item_norm: Floats
    als_factors: Floats
    als: ALSParams
    counts: DayCounts
    text: Floats | None
    genres: sp.csr_matrix
    events: int
    log_cols: npt.NDArray[np.int64] | None = None
    log_times: npt.NDArray[np.int64] | None = None
    log_ratings: npt.NDArray[np.float64] | None = None

    def queries(self) -> LogQueries:
        """What the features and the popularity source ask of the log: the events where the
        tables hold them, else the build's per-item counts."""
        if self.log_cols is None or self.log_times is None or self.log_ratings is None:
            return self.counts
        return EventLog(len(self.item_ids), self.log_cols, self.log_times, self.log_ratings)

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
        covisit = top_k_rows(
            CoVisitationSource.build(item_ids, histories).table, COVISIT_NEIGHBOURS
        )
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
        cooccurrence, item_norm = cooccurrence_top_k(users_of, NEIGHBOURS)
        log_cols, log_times, log_ratings = event_arrays(col, histories)
        counts = DayCounts.of(EventLog(len(item_ids), log_cols, log_times, log_ratings))
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
            cooccurrence,
            item_norm,
            np.asarray(factors, dtype=np.float32),
            als,
            counts,
            text,
            genres,
            len(log_cols),
            log_cols,
            log_times,
            log_ratings,
        )

    def save(self, folder: str | Path) -> list[Path]:
        """Writes ``stage.npz`` and ``stage.json`` into ``folder`` (the item-side tables and
        the log's per-item counts, not its events); returns both paths."""
        out = Path(folder)
        arrays: dict[str, Any] = {
            "als_factors": self.als_factors,
            "item_norm": self.item_norm,
            **self.counts.arrays(),
        }
        if self.text is not None:
            arrays["text"] = self.text
        for name in SPARSE:
            m = getattr(self, name).tocsr()
            arrays.update(
                {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr}
            )
        shapes = {n: list(getattr(self, n).shape) for n in SPARSE}
        with (out / ARRAYS).open("wb") as handle:
            np.savez(handle, **arrays)
        spec = {
            "format": FORMAT,
            "item_ids": self.item_ids,
            "als": asdict(self.als),
            "shapes": shapes,
            "events": self.events,
            "neighbours": {"covisit": COVISIT_NEIGHBOURS, "cooccurrence": NEIGHBOURS},
            "text": self.text is not None,
        }
        (out / SPEC).write_text(json.dumps(spec, sort_keys=True))
        return [out / ARRAYS, out / SPEC]

    @classmethod
    def load(cls, folder: str | Path) -> StageTables:
        """Reads what :meth:`save` wrote (or an older version's tables, made item-side).

        Raises:
            ValueError: the files are of another format or do not fit together.
        """
        path = Path(folder)
        spec = json.loads((path / SPEC).read_text())
        if spec.get("format") not in (FORMAT, OLD_FORMAT):
            raise ValueError(f"{path / SPEC}: format {spec.get('format')!r}, expected {FORMAT}")
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}

        def csr(name: str) -> sp.csr_matrix:
            return sp.csr_matrix(
                (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
                shape=tuple(spec["shapes"][name]),
            )

        n = len(spec["item_ids"])
        if spec["format"] == OLD_FORMAT:
            cooccurrence, item_norm = cooccurrence_top_k(csr("users_of"), NEIGHBOURS)
            covisit = top_k_rows(csr("covisit"), COVISIT_NEIGHBOURS)
            counts = DayCounts.of(
                EventLog(n, arrays["log_cols"], arrays["log_times"], arrays["log_ratings"])
            )
        else:
            cooccurrence, item_norm = csr("cooccurrence"), arrays["item_norm"]
            covisit, counts = csr("covisit"), DayCounts.from_arrays(arrays)
        tables = cls(
            list(spec["item_ids"]),
            covisit,
            cooccurrence,
            item_norm,
            arrays["als_factors"],
            ALSParams(**spec["als"]),
            counts,
            arrays.get("text"),
            csr("genres"),
            int(spec["events"]),
        )
        if (
            tables.covisit.shape != (n, n)
            or tables.cooccurrence.shape != (n, n)
            or len(tables.als_factors) != n
            or len(tables.item_norm) != n
            or len(counts.total) != n
        ):
            raise ValueError(f"{path}: tables of {n} items do not fit together")
        return tables

    @staticmethod
    def load_counts(folder: str | Path) -> tuple[list[str], DayCounts]:
        """The item ids and the log's per-item answers alone (what a serving process without
        a ranker reads of the tables: its popularity, counts and clock).

        Raises:
            ValueError: the files are of another format.
        """
        path = Path(folder)
        spec = json.loads((path / SPEC).read_text())
        if spec.get("format") != FORMAT:
            return (tables := StageTables.load(path)).item_ids, tables.counts
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k.startswith("day_")}
        return list(spec["item_ids"]), DayCounts.from_arrays(arrays)


EXPOSURE = "stage_exposure.npy"
"""The first stage's exposure per item (rows in the tables' order), measured by the build."""


def save_exposure(folder: str | Path, shares: npt.NDArray[np.floating]) -> Path:
    """Writes the exposure feature's values beside the tables; returns the file."""
    out = Path(folder) / EXPOSURE
    with out.open("wb") as handle:
        np.save(handle, np.asarray(shares, np.float32), allow_pickle=False)
    return out


def load_exposure(folder: str | Path, items: int) -> Floats:
    """What :func:`save_exposure` wrote.

    Raises:
        ValueError: the file holds another number of items than the tables.
    """
    path = Path(folder) / EXPOSURE
    shares = np.load(path, allow_pickle=False)
    if shares.shape != (items,):
        raise ValueError(f"{path}: {shares.shape} values for tables of {items} items")
    return np.asarray(shares, np.float32)
