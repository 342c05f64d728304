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
    if _redis_unreachable(exc):
        return EXIT_ERROR  # the configured Redis is down: one line naming it, not a traceback
    return None


def message(exc: Exception) -> str:
    """The one line a known error prints after ``error:``."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if _redis_unreachable(exc):
        return f"Redis does not answer ({exc}); check DUORANK_REDIS_URL / --redis-url"
    return str(exc)


def _redis_unreachable(exc: Exception) -> bool:
    redis = sys.modules.get("redis")  # only once a command has used Redis
    return redis is not None and isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
