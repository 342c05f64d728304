"""Which index version serves, and everything a call needs from it, loaded once.

A :class:`VersionLoader` turns a published version into a :class:`Loaded`: the verified FAISS
index, the user tower that comes with the version (the trained tower published inside it, the
text tower, or pooled item vectors), the features the cross-encoder reads, and, where a
ranking stage serves, its candidate sources and feature tables. It also opens the version to
serve at start-up, falling back, when asked, to the newest *published* version that verifies.
The :class:`serving.recommender.Recommender` answers calls on whatever it loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from catalog.model import Catalog
from catalog.text import HistoryEvent, UserTextTemplate
from indexer.store import IndexRoot, NoVersionError, VerifyError
from rerank.cross_encoder.pairs import FeatureMaker
from rerank.cross_encoder.training_args import FEATURES
from rerank.ranker.features import TEXT_FEATURES
from retrieval.index import VectorIndex
from retrieval.towers import HistoryTextTower, MeanItemsTower, UserTower
from retrieval.vectors import ItemVectors
from serving.logstats import LogStats

if TYPE_CHECKING:
    from rerank.cross_encoder import Reranker
    from rerank.ranker import GBDTRanker
    from rerank.ranker.candidates import CandidateStage
    from retrieval.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """One index version, ready to serve."""

    version: str
    index: VectorIndex
    tower: UserTower
    manifest: dict[str, Any]
    features: FeatureMaker
    stats: LogStats
    """The log's per-item totals: the catalog's, or those the version's tables saved."""
    stage: CandidateStage | None = None  # the ranking stage's sources, when a ranker serves
    ranker_cols: npt.NDArray[np.int64] | None = None  # the ranker's columns in the stage's rows


@dataclass(frozen=True)
class Opened:
    """What :meth:`VersionLoader.open` serves, and why when it is not CURRENT's version."""

    loaded: Loaded
    degraded: str | None = None
    refused: tuple[object, ...] | None = None  # CURRENT's signature, not verified again


@dataclass
class VersionLoader:
    """Loads published versions of one index root for one catalog and set of models.

    ``stats`` are the catalog's log totals; None for a catalog loaded without its log (items
    only: the users live in the online store), whose versions must carry the ranking stage's
    tables, since those totals, and the first stage's exposure, come from them then."""

    root: IndexRoot
    catalog: Catalog
    histories: Mapping[str, list[HistoryEvent]]
    stats: LogStats | None
    reranker: Reranker | None = None
    ranker: GBDTRanker | None = None
    user_encoder: Encoder | None = None
    user_text_template: UserTextTemplate | None = None
    n_recent: int = 5
    text_vectors: ItemVectors | Callable[[], ItemVectors] | None = None

    def open(self, pinned: str | None, fallback: bool) -> Opened:
        """The pinned version, else CURRENT, or with ``fallback`` the newest published version
        (one CURRENT has named) that verifies, loudly.

        Raises:
            indexer.NoVersionError: nothing published, or (with ``fallback``) nothing verifies.
            indexer.VerifyError: CURRENT's version is damaged (without ``fallback``).
        """
        if pinned is not None:
            return Opened(self.load(pinned))
        try:
            return Opened(self.load(self.root.require_current()))
        except VerifyError as exc:
            if not fallback:
                raise
            damaged = exc
        current = self.root.current_or_none()
        unpublished = set(self.root.unpublished())
        others = 0  # newer versions, besides CURRENT's, that failed too
        for version in reversed(self.root.versions()):  # newest first, each verified once
            if version == current or version in unpublished:
                continue
            try:
                loaded = self.load(version)
            except (VerifyError, NoVersionError):
                others += 1
                continue
            degraded = f"{damaged}; serving {version}, the newest version that verifies" + (
                f" ({others} newer also failed)" if others else ""
            )
            log.error("DEGRADED: %s", degraded)
            return Opened(loaded, degraded, self.signature(current))
        raise NoVersionError(f"{self.root.path}: no published version verifies ({damaged})")

    def signature(self, version: str | None) -> tuple[object, ...]:
        """What CURRENT names and the sizes and times of that version's files: a refused
        version is verified again only when one of these changes (hashing a large index every
        few seconds would be a cost of its own)."""
        files: list[tuple[str, int, int]] = []
        try:
            folder = self.root.version_dir(version or "")
            for path in sorted(folder.iterdir()):
                stat = path.stat()
                files.append((path.name, stat.st_size, stat.st_mtime_ns))
        except (OSError, LookupError):
            pass
        return (version, tuple(files))

    def load(self, version: str) -> Loaded:
        """Verifies and loads ``version`` with its tower, features and ranking stage.

        Raises:
            indexer.VerifyError: the version is damaged (nothing is loaded).
            ValueError: the models do not fit the version (another text model, missing
                features).
        """
        index, manifest = self.root.load(version)
        vectors = index.item_vectors()
        tower = self._tower(version, manifest, vectors)
        expected = getattr(getattr(self.reranker, "config", None), "retrieval", tower.name)
        if expected != tower.name:
            log.warning(
                "the reranker learned from a %s first stage, index version %s serves a %s "
                "tower: its retrieval_score feature will be off",
                expected,
                version,
                tower.name,
            )
        stats = self.stats or self._saved_stats(version, manifest)
        # The reranker's features, computed exactly as in training (one shared definition).
        features = FeatureMaker(
            tower,
            index,
            stats.counts,
            self.reranker.config.features if self.reranker is not None else FEATURES[:2],
            stats.ratings,
            vectors,
        )
        stage = self._stage(version, manifest, tower, index) if self.ranker is not None else None
        cols = None
        if stage is not None and self.ranker is not None:  # a ranker reads its columns by name
            cols = np.array([stage.names.index(n) for n in self.ranker.names], dtype=np.int64)
        return Loaded(version, index, tower, manifest, features, stats, stage, cols)

    def _saved_stats(self, version: str, manifest: Mapping[str, Any]) -> LogStats:
        """The log's totals from the version's stage tables (a catalog without its log).

        Raises:
            ValueError: the version carries no stage tables.
        """
        from rerank.ranker.tables import StageTables

        if not manifest.get("stage"):
            raise ValueError(
                f"index version {version} carries no ranking-stage tables, and the catalog "
                "was loaded without its interactions (users from the online store): build "
                "the index with --ranker, or serve with the dataset's log"
            )
        ids, counts = StageTables.load_counts(self.root.version_dir(version))
        return LogStats.of_day_counts(counts, ids, list(self.catalog.items))

    def _tower(self, version: str, manifest: Mapping[str, Any], vectors: ItemVectors) -> UserTower:
        """The user tower that comes with the version: its trained tower, else the text tower
        (with ``user_encoder``), else the mean of recent liked item vectors."""
        if manifest.get("tower"):  # a trained tower published with this version
            from retrieval.sequential import SequentialTower

            return SequentialTower.load(self.root.version_dir(version)).bind(vectors)
        if self.user_encoder is not None:
            if manifest.get("model_fingerprint") != self.user_encoder.fingerprint:
                raise ValueError(
                    f"index version {version} was built with model "
                    f"{manifest.get('model_fingerprint')}, the user encoder is "
                    f"{self.user_encoder.fingerprint}: their vectors are not comparable"
                )
            return HistoryTextTower(self.user_encoder, self.catalog.items, self.user_text_template)
        return MeanItemsTower(vectors, n_recent=self.n_recent)

    def _stage(
        self, version: str, manifest: Mapping[str, Any], tower: UserTower, index: VectorIndex
    ) -> CandidateStage:
        """The ranking stage's sources and features: over the tables the version carries
        (``index build --ranker``), else fitted from the catalog here (logged)."""
        from rerank.ranker.candidates import CandidateStage
        from rerank.ranker.tables import FORMAT, OLD_FORMAT, ALSParams, StageTables

        assert self.ranker is not None
        settings = self.ranker.record.get("stage", {})
        depths = settings.get("depths")
        learned = settings.get("tables", OLD_FORMAT)
        if learned != FORMAT:
            log.warning(
                "the ranker learned its features from stage tables of format %s, this version "
                "serves %s (windows from a day boundary, neighbours bounded per item): its "
                "scores will be off until it is retrained (`duorank train ranker`)",
                learned,
                FORMAT,
            )
        if manifest.get("stage"):
            tables = StageTables.load(self.root.version_dir(version))
        elif self.stats is None:
            raise ValueError(
                f"index version {version} carries no ranking-stage tables (index build "
                "--ranker), and the catalog was loaded without the log to fit them on"
            )
        else:
            log.warning(
                "index version %s carries no ranking-stage tables (index build --ranker): "
                "fitting them from the catalog",
                version,
            )
            text = [n for n in self.ranker.names if n in TEXT_FEATURES]
            vectors = self.text_vectors() if callable(self.text_vectors) else self.text_vectors
            if text and vectors is None:
                raise ValueError(
                    f"the ranker reads {text}: pass the catalog's text vectors (text_vectors=) "
                    "or serve an index version built with --ranker"
                )
            als = ALSParams(**settings["als"]) if "als" in settings else None
            tables = StageTables.fit(self.catalog.items, self.histories, vectors, als)
        if tables.text is None and any(n in TEXT_FEATURES for n in self.ranker.names):
            raise ValueError(f"index version {version}'s stage tables carry no text vectors")
        shares = self._exposure(version, manifest, tower, len(tables.item_ids))
        stage = CandidateStage.from_tables(
            tables,
            tower,
            index,
            depths=depths,
            histories=self.histories if shares is None and self.stats is not None else None,
            shares=shares,
        )
        if shares is None and self.stats is None:
            log.warning(
                "index version %s carries no exposure measured for its %s tower, and the "
                "catalog holds no histories to measure it: the ranker reads zeros there",
                version,
                tower.name,
            )
        missing = [n for n in self.ranker.names if n not in stage.names]
        if missing:
            raise ValueError(f"the ranker reads features this stage lacks: {missing}")
        return stage

    def _exposure(
        self, version: str, manifest: Mapping[str, Any], tower: UserTower, items: int
    ) -> npt.NDArray[np.float32] | None:
        """The exposure the build measured, where it measured it for the tower that serves
        (else None: measured here over the catalog's histories, when it holds them)."""
        from rerank.ranker.candidates import exposure_key
        from rerank.ranker.tables import load_exposure

        saved = (manifest.get("stage") or {}).get("exposure") or {}
        if saved.get("tower") != exposure_key(tower):
            return None
        return load_exposure(self.root.version_dir(version), items)
