"""The nightly job around one :class:`~indexer.build.IndexBuild`: where the items come from,
and the order that keeps a second build cheap to refuse (lock, then tower, then the model)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.fsutil import sha256_file
from catalog.model import Item
from catalog.store import load_catalog, read_manifest
from catalog.table import ColumnMapping, load_items
from indexer.build import BuildConfig, IndexBuild, StageWriter
from indexer.encoding import EncodeEngine
from indexer.lock import BuildLock
from retrieval.encoder import Encoder

EncoderFactory = Callable[[], contextlib.AbstractContextManager[Encoder]]
"""Opens the encoder (and its cache) for the build and closes it afterwards."""


class TowerLoadError(RuntimeError):
    """The tower named for the build cannot be loaded (the message names it)."""


@dataclass(frozen=True)
class CatalogSource:
    """The items to index, where they came from and the hash of that source (both recorded in
    the manifest)."""

    items: Mapping[str, Item]
    source: dict[str, Any]
    source_hash: str

    @classmethod
    def from_dataset(cls, path: Path, text_as_of: int | None = None) -> CatalogSource:
        """A dataset folder written by ``duorank data import``, its items' text as of
        ``text_as_of`` (dated tags written before it only; None: every tag), which the
        manifest records."""
        return cls(
            load_catalog(path).items_as_of(text_as_of),
            {"data": str(path.resolve()), "text_as_of": text_as_of},
            read_manifest(path)["files"]["items.parquet"],
        )

    @classmethod
    def from_items_file(
        cls, path: Path, mapping: ColumnMapping | None = None, duplicates: str = "error"
    ) -> CatalogSource:
        """An items table (.csv, .tsv, .jsonl, .parquet) with a column mapping."""
        items, _ = load_items(path, mapping=mapping, duplicates=duplicates)
        return cls(items, {"items": str(path.resolve())}, sha256_file(path))


def publish_version(
    root: Path,
    catalog: CatalogSource,
    open_encoder: EncoderFactory,
    config: BuildConfig | None = None,
    *,
    tower_path: Path | None = None,
    stage: StageWriter | None = None,
    progress: bool | None = None,
    engine: EncodeEngine | None = None,
) -> dict[str, Any]:
    """Builds, verifies and publishes one version; returns its manifest (``engine``: where
    the encoding runs, see :class:`indexer.build.IndexBuild`).

    The lock is taken before the tower and the model load, so a second build is refused in
    milliseconds, not after a model load.

    Raises:
        indexer.LockHeldError: another build holds the lock (and ``config.wait`` is off).
        TowerLoadError: ``tower_path`` is not a loadable tower.
    """
    cfg = config or BuildConfig()
    root.mkdir(parents=True, exist_ok=True)
    with BuildLock(root, wait=cfg.wait, timeout=cfg.lock_timeout):
        tower = None
        if tower_path is not None:
            from retrieval.sequential import SequentialTower

            try:
                tower = SequentialTower.load(tower_path)
            except (OSError, ValueError, KeyError) as exc:
                raise TowerLoadError(f"cannot load the tower at {tower_path}: {exc}") from None
        with open_encoder() as encoder:
            build = IndexBuild(root, encoder, cfg, tower=tower, stage=stage, engine=engine)
            return build.run(
                catalog.items,
                source=catalog.source,
                source_hash=catalog.source_hash,
                lock_held=True,
                progress=progress,
            )
