"""Exit codes and which error types map to them."""

from __future__ import annotations

import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_LOCKED, EXIT_VERIFY = 0, 1, 2, 3, 4


def exit_code(exc: Exception) -> int | None:
    """The documented exit code of a known error type; None for anything else (a traceback).

    The index's errors are looked up only once :mod:`indexer` is loaded, so commands that never
    touch an index do not import FAISS.
    """
    from catalog.errors import DataError

    store = sys.modules.get("indexer.store")
    lock = sys.modules.get("indexer.lock")
    nightly = sys.modules.get("indexer.nightly")
    if store is not None and isinstance(exc, store.VerifyError):
        return EXIT_VERIFY  # a damaged index version: one line, never a traceback
    if store is not None and isinstance(exc, store.NoVersionError):
        return EXIT_USAGE
    if lock is not None and isinstance(exc, lock.LockHeldError):
        return EXIT_LOCKED
    if nightly is not None and isinstance(exc, nightly.TowerLoadError):
        return EXIT_ERROR
    if isinstance(exc, (DataError, KeyError, FileNotFoundError, ValueError)):
        return EXIT_USAGE  # bad input, a missing model folder, a bad value
    return None
