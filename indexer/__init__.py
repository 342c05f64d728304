"""Nightly index builds: catalog -> cached embeddings -> FAISS -> versioned, verified, published."""

from indexer.build import BuildConfig, EncodedBatch, IndexBuild, encode_items
from indexer.lock import BuildLock, LockHeldError
from indexer.store import IndexRoot, NoVersionError, VerifyError

__all__ = [
    "BuildConfig",
    "BuildLock",
    "EncodedBatch",
    "IndexBuild",
    "IndexRoot",
    "LockHeldError",
    "NoVersionError",
    "VerifyError",
    "encode_items",
]
