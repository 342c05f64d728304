"""Nightly index builds: catalog -> cached embeddings -> FAISS -> versioned, verified, published."""

from indexer.build import BuildConfig, IndexBuild
from indexer.encoding import EncodedBatch, encode_items
from indexer.lock import BuildLock, LockHeldError
from indexer.nightly import CatalogSource, TowerLoadError, publish_version
from indexer.store import IndexRoot, NoVersionError, VerifyError

__all__ = [
    "BuildConfig",
    "BuildLock",
    "CatalogSource",
    "EncodedBatch",
    "IndexBuild",
    "IndexRoot",
    "LockHeldError",
    "NoVersionError",
    "TowerLoadError",
    "VerifyError",
    "encode_items",
    "publish_version",
]
