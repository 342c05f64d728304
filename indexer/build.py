"""The nightly build: catalog -> item text -> cached embeddings -> FAISS -> published version.

Incremental by construction: item vectors come through the Redis cache keyed by model
fingerprint and exact text, so unchanged items are cache hits, changed text is a new key (a new
vector), and removed items simply are not in the new version. The summary reports encoded vs
reused, and added/changed/removed against the previous version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from catalog.fsutil import fsync_dir, fsync_tree, sha256_file, write_json
from catalog.model import Item
from catalog.text import ItemTextTemplate
from indexer.encoding import (
    Encoded,
    EncodeEngine,
    LocalEngine,
    Matrix,
    vector_buffer,
)
from indexer.lock import BuildLock
from indexer.store import MANIFEST, IndexRoot, NoVersionError
from retrieval.encoder import CacheAudit, Encoder
from retrieval.index import VectorIndex, make_index
from retrieval.sequential import SequentialTower
from retrieval.towers import MeanItemsTower, UserTower
from retrieval.vectors import ItemVectors

log = logging.getLogger(__name__)


ItemTransform = Callable[[Sequence[str], Matrix], Matrix]
"""Maps (item ids, text vectors) to the vectors to index (e.g. a trained adaptor)."""


class StageWriter(Protocol):
    """Writes the ranking stage's files into an index version's staging folder, in two steps
    because the second reads what the build makes between them."""

    def tables(self, text_vectors: ItemVectors, folder: Path) -> dict[str, Any]:
        """The tables, from the items' text vectors; returns the manifest's ``stage`` entry."""
        ...

    def exposure(self, tower: UserTower, index: VectorIndex, folder: Path) -> dict[str, Any]:
        """What the version's own first stage shows each user (its index and user tower are
        built by then); returns more entries for the ``stage`` entry."""
        ...


def text_hash(text: str) -> str:
    """Short sha256 of an item's text, stored per item to diff versions."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def new_version_id() -> str:
    """A sortable, unique version id: UTC time to the microsecond plus 4 random hex digits."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{secrets.token_hex(2)}"


def _distrusted(audit: CacheAudit | None) -> bool:
    """Whether a cache audit found cached vectors that differ from the model (then the build
    re-encodes every item and overwrites its entry), said loudly."""
    if audit is None or not audit.mismatched:
        return False
    log.error(
        "cache audit: %d of %d sampled cached vectors differ from the model (cosine "
        "distance up to %.3g): the cache is not trusted for this build; every item is "
        "re-encoded and its entry overwritten",
        audit.mismatched,
        audit.checked,
        audit.worst_distance,
    )
    return True


@dataclass(frozen=True)
class BuildConfig:
    """Build options (recorded in the manifest).

    Attributes:
        index_type: ``flat``, ``hnsw`` or ``ivfpq``.
        index_params: backend parameters (see :mod:`retrieval.index`).
        keep: published versions to keep (CURRENT is never deleted).
        batch_size: items per encoding batch.
        template: item text template.
        wait: wait for another build's lock instead of failing.
        lock_timeout: seconds to wait for the lock (None = forever).
        verify_cache_sample: before encoding, re-encode this many random items and compare
            them with the cache; on any mismatch the cache is not trusted for this build
            (every item re-encoded, its entries overwritten). 0 checks nothing.
        spill_items: catalogs with more items than this keep their vectors in files in the
            staging folder (memory-mapped, removed before publishing) instead of RAM: encoded
            batch by batch, transformed and added to the index shard by shard (an IVF-PQ index
            is trained on its seeded sample first). The published version is the same.
    """

    index_type: str = "flat"
    index_params: Mapping[str, Any] = field(default_factory=dict)
    keep: int = 3
    batch_size: int = 512
    template: ItemTextTemplate = field(default_factory=ItemTextTemplate)
    wait: bool = False
    lock_timeout: float | None = None
    verify_cache_sample: int = 0
    spill_items: int = 1_000_000


SPILL_FILES = ("vectors.npy", "indexed.npy")
"""The spilled matrices' names in the staging folder (never published)."""


TRANSFORM_SHARD = 65_536
"""Items per call of the transform when the vectors are spilled."""


class IndexBuild:
    """Builds and publishes one index version under ``root``.

    Args:
        root: the index root folder.
        encoder: the text encoder, with its cache attached for incremental builds.
        config: build options.
        transform: optional map from text vectors to indexed vectors (a trained adaptor), with
            its own fingerprint in ``transform_fingerprint``.
        tower: a trained sequential tower: its item side is the transform, and the tower is
            saved inside the version (``tower.json``, ``model.safetensors``) so that serving
            swaps index and user tower together, atomically.
        stage: writes the ranking stage's tables into the staging folder from the build's text
            vectors, then, once the index and the tower are written, the first stage's exposure
            per item (``duorank.jobs`` fits them with
            :class:`rerank.ranker.tables.StageTables`); they are checksummed and published with the
            index and the tower.
        engine: where the encoding step runs: :class:`LocalEngine` (default) or
            :class:`indexer.ray_engine.RayEngine` (Ray Data actors); everything after it is
            the same, so both publish the same version.
    """

    def __init__(
        self,
        root: str | Path,
        encoder: Encoder,
        config: BuildConfig | None = None,
        *,
        transform: ItemTransform | None = None,
        transform_fingerprint: str | None = None,
        tower: SequentialTower | None = None,
        stage: StageWriter | None = None,
        engine: EncodeEngine | None = None,
    ) -> None:
        if (config or BuildConfig()).keep < 1:
            raise ValueError("keep must be >= 1")
        if (config or BuildConfig()).verify_cache_sample < 0:
            raise ValueError("verify_cache_sample must be >= 0")
        if (config or BuildConfig()).spill_items < 0:
            raise ValueError("spill_items must be >= 0")
        if tower is not None and transform is not None:
            raise ValueError("pass a tower or a transform, not both")
        self.root = IndexRoot(Path(root))
        self.encoder = encoder
        self.config = config or BuildConfig()
        self.transform = tower.item_transform if tower is not None else transform
        self.transform_fingerprint = transform_fingerprint
        self.tower = tower
        self.stage = stage
        self.engine: EncodeEngine = engine or LocalEngine()

    def run(
        self,
        items: Mapping[str, Item],
        *,
        source: Mapping[str, Any],
        source_hash: str,
        progress: bool | None = None,
        lock_held: bool = False,
    ) -> dict[str, Any]:
        """Builds, verifies and publishes a new version; returns its manifest.

        Args:
            items: the catalog's items.
            source: where they came from (recorded in the manifest).
            source_hash: hash of the source catalog (recorded in the manifest).
            progress: show a progress bar (None: only on a terminal).
            lock_held: the caller already holds this root's :class:`BuildLock` (the CLI takes
                it before loading the model, so a second build fails fast).

        Raises:
            indexer.lock.LockHeldError: another build holds the lock (and ``wait`` is off).
            ValueError: no item has any text.
        """
        self.root.path.mkdir(parents=True, exist_ok=True)
        lock = (
            contextlib.nullcontext()
            if lock_held
            else BuildLock(self.root.path, wait=self.config.wait, timeout=self.config.lock_timeout)
        )
        with lock:
            self._clean_staging()
            version = new_version_id()
            staging = self.root.staging_dir / version
            staging.mkdir(parents=True)
            try:
                manifest = self._build(items, version, staging, source, source_hash, progress)
                target = self.root.version_dir(version)
                self.root.versions_dir.mkdir(parents=True, exist_ok=True)
                staging.rename(target)
                fsync_dir(self.root.versions_dir)
                fsync_dir(self.root.staging_dir)
                self.root.verify(version)
                started = time.perf_counter()
                self.root.set_current(version)
                manifest["build"]["seconds"]["publish"] = time.perf_counter() - started
                manifest["build"]["removed_versions"] = self._retain()
                return manifest
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)

    def _clean_staging(self) -> None:
        """Removes what a crashed build left in staging and its stale CURRENT temp files (we
        hold the lock: nobody else builds), and says which versions it left unpublished."""
        if self.root.staging_dir.is_dir():
            for leftover in self.root.staging_dir.iterdir():
                log.info("removing leftover staging folder %s", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
        for name in self.root.remove_stale_temp_files():
            log.info("removing a killed publish's temp file %s", name)
        for version in self.root.unpublished():
            log.warning(
                "version %s was never published (a build stopped before CURRENT named it): "
                "serving never falls back to it; `index list` marks it",
                version,
            )

    def _build(
        self,
        items: Mapping[str, Item],
        version: str,
        staging: Path,
        source: Mapping[str, Any],
        source_hash: str,
        progress: bool | None,
    ) -> dict[str, Any]:
        cfg = self.config
        seconds: dict[str, float] = {}
        cache = self.encoder.cache
        hits_before = cache.stats.hits if cache else 0
        encoded_before = self.encoder.encoded
        all_items = list(items.values())

        started = time.perf_counter()
        audit = self._audit_cache(all_items)
        seconds["audit_cache"] = time.perf_counter() - started
        audit_encoded = self.encoder.encoded - encoded_before  # the audit's own re-encodes
        audit_hits = (cache.stats.hits - hits_before) if cache else 0
        refresh = _distrusted(audit)

        started = time.perf_counter()
        spill = len(all_items) > cfg.spill_items
        result = self._encode(all_items, staging if spill else None, refresh, progress)
        ids, skipped = result.ids, result.skipped_empty
        hashes = {i: text_hash(t) for i, t in zip(ids, result.texts, strict=True)}
        vectors = np.asarray(result.vectors, dtype=np.float32)  # no copy of a spilled file
        seconds["encode"] = time.perf_counter() - started

        stage_spec: dict[str, Any] | None = None
        if self.stage is not None:
            started = time.perf_counter()
            stage_spec = self.stage.tables(ItemVectors(ids, vectors), staging)
            seconds["stage"] = time.perf_counter() - started

        if self.transform is not None:
            started = time.perf_counter()
            out = staging / SPILL_FILES[1] if spill else None
            vectors = self._apply_transform(ids, vectors, out)
            seconds["transform"] = time.perf_counter() - started

        started = time.perf_counter()
        index = make_index(cfg.index_type, vectors.shape[1], **dict(cfg.index_params))
        index.build(ids, vectors)
        seconds["index"] = time.perf_counter() - started

        started = time.perf_counter()
        index.save(staging)
        dims = int(vectors.shape[1])
        encoded, cache_hits = result.encoded, result.cache_hits
        del vectors, result
        for name in SPILL_FILES:  # the index holds what it needs; these are never published
            (staging / name).unlink(missing_ok=True)
        tower_spec = self._save_tower(staging)
        if self.stage is not None and stage_spec is not None:
            began = time.perf_counter()
            served = self._served_tower(staging, index)
            stage_spec.update(self.stage.exposure(served, index, staging))
            seconds["exposure"] = time.perf_counter() - began
        (staging / "item_hashes.json").write_text(json.dumps(hashes, sort_keys=True))
        manifest: dict[str, Any] = {
            "format": "duorank.index/1",
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": self.encoder.describe(),
            "model_fingerprint": self.encoder.fingerprint,
            "transform_fingerprint": self.transform_fingerprint,
            "tower": tower_spec,
            "stage": stage_spec,
            "text_template": {
                "fingerprint": cfg.template.fingerprint(),
                "params": {k: getattr(cfg.template, k) for k in cfg.template.__dataclass_fields__},
            },
            "dims": dims,
            "metric": "inner_product",
            "index": {"type": cfg.index_type, "params": index.params},
            "items": len(ids),
            "source": dict(source),
            "source_hash": source_hash,
            "build": {
                "items": len(ids),
                "encoded": audit_encoded + encoded,
                "cache_hits": audit_hits + cache_hits,
                "skipped_empty": len(skipped),
                "cache_audit": (
                    None if audit is None else {**asdict(audit), "trusted": audit.mismatched == 0}
                ),
                **self._diff(hashes),
                "seconds": seconds,
            },
            "files": {},
        }
        seconds["write"] = time.perf_counter() - started
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        write_json(staging / MANIFEST, manifest)
        fsync_tree(staging)
        return manifest

    def _encode(
        self, items: Sequence[Item], spill_to: Path | None, refresh: bool, progress: bool | None
    ) -> Encoded:
        """Every item's text encoded through the cache by the build's engine (into a file in
        ``spill_to`` past ``spill_items``); items with no text are skipped, said, and counted.

        Raises:
            ValueError: no item has any text.
        """
        cfg = self.config
        result = self.engine.encode(
            items,
            cfg.template,
            self.encoder,
            cfg.batch_size,
            progress,
            refresh,
            spill=spill_to / SPILL_FILES[0] if spill_to is not None else None,
        )
        skipped = result.skipped_empty
        if not result.ids:
            raise ValueError(
                f"no item has any text ({len(skipped)} items, all empty): nothing to index"
            )
        if skipped:
            log.warning(
                "%d items have empty text and were skipped (e.g. %s)",
                len(skipped),
                ", ".join(skipped[:5]),
            )
        return result

    def _save_tower(self, staging: Path) -> dict[str, Any] | None:
        """The trained tower's files into the version (and its fingerprint as the transform's),
        or None without one."""
        if self.tower is None:
            return None
        tower_files = [self.tower.save(staging), staging / "model.safetensors"]
        digest = hashlib.sha256()
        for path in tower_files:
            digest.update(sha256_file(path).encode())
        self.transform_fingerprint = f"{self.tower.name}-{digest.hexdigest()[:16]}"
        return {
            "name": self.tower.name,
            "files": [p.name for p in tower_files],
            "config": self.tower.config(),
        }

    def _served_tower(self, staging: Path, index: VectorIndex) -> UserTower:
        """The user tower a serving process pairs with this version by default, loaded as it
        loads it: the trained tower saved in the version, else pooled item vectors."""
        vectors = ItemVectors(index.ids, index.reconstruct(np.arange(len(index))))
        if self.tower is not None:
            return SequentialTower.load(staging).bind(vectors)
        return MeanItemsTower(vectors)

    def _apply_transform(self, ids: Sequence[str], vectors: Matrix, spill: Path | None) -> Matrix:
        """The transform's vectors: in one call, or with ``spill`` shard by shard into a file."""
        assert self.transform is not None
        if spill is None:
            return np.ascontiguousarray(self.transform(ids, vectors), dtype=np.float32)
        out: Matrix | None = None
        for start in range(0, len(ids), TRANSFORM_SHARD):
            end = start + TRANSFORM_SHARD
            part = self.transform(ids[start:end], np.asarray(vectors[start:end]))
            if out is None:
                out = vector_buffer(len(ids), part.shape[1], spill)
            out[start : start + len(part)] = part
        assert out is not None
        return out

    def _audit_cache(self, items: Sequence[Item]) -> CacheAudit | None:
        """The cache audit of ``verify_cache_sample`` items (None when off or uncached)."""
        n = self.config.verify_cache_sample
        if n == 0 or self.encoder.cache is None:
            return None
        texts = [t for t in (self.config.template.render(i) for i in items) if t]
        audit = self.encoder.audit_cache(texts, sample=n)
        log.info(
            "cache audit: %d sampled, %d cached, %d differ from the model",
            audit.sampled,
            audit.checked,
            audit.mismatched,
        )
        return audit

    def _diff(self, hashes: Mapping[str, str]) -> dict[str, int | str | None]:
        """Added/changed/removed/unchanged item counts against the current version."""
        previous = self.root.current_or_none()  # a damaged CURRENT: diff against nothing
        old: dict[str, str] = {}
        if previous is not None:
            try:
                old = json.loads((self.root.version_dir(previous) / "item_hashes.json").read_text())
            except (OSError, json.JSONDecodeError, NoVersionError):
                old = {}
        return {
            "previous_version": previous,
            "added": sum(1 for i in hashes if i not in old),
            "changed": sum(1 for i, h in hashes.items() if i in old and old[i] != h),
            "removed": sum(1 for i in old if i not in hashes),
            "unchanged": sum(1 for i, h in hashes.items() if old.get(i) == h),
        }

    def _retain(self) -> list[str]:
        """Deletes the oldest versions beyond ``keep``; never the one CURRENT names."""
        current = self.root.current_or_none()
        versions = self.root.versions()
        doomed = [v for v in versions[: max(0, len(versions) - self.config.keep)] if v != current]
        for version in doomed:
            shutil.rmtree(self.root.version_dir(version), ignore_errors=True)
        return doomed
