"""The embedding cache in Redis.

Key: ``<namespace>:<model fingerprint>:<sha256 of the exact text>``. Value: the vector as raw
little-endian IEEE floats (``float32`` by default, ``float16`` to halve memory), never pickle.
Redis is a cache, never the only copy: every Redis error is a miss, logged once per burst and
counted. A value that cannot be what we stored (the wrong length, a non-finite number, or with
``unit_norm`` a norm away from 1) is *corrupt*: counted, treated as a miss, recomputed and
overwritten by the caller. A finite unit vector of the right size that is simply wrong (another
text's vector) cannot be told from the value alone; :func:`retrieval.encoder.Encoder.audit_cache`
re-encodes a sample to check a cache one does not trust.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
from redis.cluster import RedisCluster

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]
_DTYPES: dict[str, np.dtype[np.floating]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


@dataclass
class CacheStats:
    """Counters since the cache was created (thread-safe increments)."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    corrupt: int = 0
    writes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Adds to the named counters."""
        with self._lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int | float]:
        """Counters plus the hit ratio."""
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "corrupt": self.corrupt,
            "writes": self.writes,
            "hit_ratio": self.hits / lookups if lookups else 0.0,
        }


class EmbeddingCache:
    """Batched get/put of vectors keyed by model fingerprint and exact text.

    Args:
        client: a ``redis.Redis`` or ``RedisCluster`` client (see
            :mod:`retrieval.redis_client`); on a cluster, reads and writes go node by node.
        namespace: key prefix, so several applications can share one Redis.
        dtype: ``"float32"`` (exact) or ``"float16"`` (half the memory, ~1e-3 relative error).
        ttl: seconds before a key expires; None keeps keys until evicted.
        chunk_size: keys per MGET or pipeline, bounding request size and server latency.
        error_log_interval: seconds between two error log lines (errors are always counted).
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        namespace: str = "duorank:emb",
        dtype: str = "float32",
        ttl: int | None = None,
        chunk_size: int = 512,
        error_log_interval: float = 30.0,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if ttl is not None and ttl < 1:
            raise ValueError(f"ttl must be >= 1 second or None, got {ttl}")
        self.client = client
        self.namespace = namespace
        self.dtype = dtype
        self._np_dtype = _DTYPES[dtype]
        self.ttl = ttl
        self.chunk_size = chunk_size
        self.stats = CacheStats()
        self._error_log_interval = error_log_interval
        self._last_error_log = -float("inf")
        self._suppressed = 0

    def key(self, fingerprint: str, text: str) -> str:
        """The Redis key of ``text`` under model ``fingerprint``."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return f"{self.namespace}:{fingerprint}:{digest}"

    def _error(self, action: str, exc: Exception) -> None:
        self.stats.add(errors=1)
        now = time.monotonic()
        if now - self._last_error_log >= self._error_log_interval:
            extra = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
            log.warning("Redis %s failed, treating as cache miss: %s%s", action, exc, extra)
            self._last_error_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    NORM_TOLERANCE = 1e-2
    """How far from 1 a unit vector's norm may be (float16 storage moves it by ~1e-3)."""

    def get_many(
        self, fingerprint: str, texts: Sequence[str], dim: int, *, unit_norm: bool = False
    ) -> list[Vector | None]:
        """Looks up vectors; None for a miss, a Redis error, or a corrupt value (the wrong
        size, a non-finite number, or with ``unit_norm`` a norm off 1)."""
        out: list[Vector | None] = [None] * len(texts)
        expected = dim * self._np_dtype.itemsize
        for start in range(0, len(texts), self.chunk_size):
            chunk = texts[start : start + self.chunk_size]
            keys = [self.key(fingerprint, t) for t in chunk]
            values: list[Any] = [None] * len(keys)
            for group in self._by_node(keys):
                try:
                    found = (
                        self.client.mget_nonatomic([keys[n] for n in group])
                        if isinstance(self.client, RedisCluster)
                        else self.client.mget([keys[n] for n in group])
                    )
                except (redis.RedisError, OSError) as exc:
                    self._error("MGET", exc)  # these keys are misses; other nodes' still count
                    continue
                for n, value in zip(group, found, strict=True):
                    values[n] = value
            hits = corrupt = 0
            for offset, raw in enumerate(values):
                if raw is None:
                    continue
                if not isinstance(raw, bytes) or len(raw) != expected:
                    corrupt += 1
                    continue
                vector = np.frombuffer(raw, dtype=self._np_dtype).astype(np.float32)
                if not np.isfinite(vector).all() or (
                    unit_norm and abs(float(np.linalg.norm(vector)) - 1.0) > self.NORM_TOLERANCE
                ):
                    corrupt += 1
                    continue
                out[start + offset] = vector
                hits += 1
            self.stats.add(hits=hits, misses=len(chunk) - hits, corrupt=corrupt)
            if corrupt:
                log.warning(
                    "%d cached vectors were corrupt (wrong length, non-finite%s); "
                    "they will be recomputed and overwritten",
                    corrupt,
                    ", norm off 1" if unit_norm else "",
                )
        return out

    def put_many(
        self, fingerprint: str, texts: Sequence[str], vectors: npt.NDArray[np.floating]
    ) -> int:
        """Stores vectors; returns how many were written (0 on a Redis error)."""
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        data = np.ascontiguousarray(vectors, dtype=self._np_dtype)
        written = 0
        for start in range(0, len(texts), self.chunk_size):
            keys = [self.key(fingerprint, t) for t in texts[start : start + self.chunk_size]]
            for group in self._by_node(keys):
                pipe = self.client.pipeline(transaction=False)
                for n in group:
                    pipe.set(keys[n], data[start + n].tobytes(), ex=self.ttl)
                try:
                    pipe.execute()
                except (redis.RedisError, OSError) as exc:
                    self._error("pipeline SET", exc)
                    continue
                written += len(group)
        self.stats.add(writes=written)
        return written

    def _by_node(self, keys: Sequence[str]) -> list[list[int]]:
        """Positions of ``keys`` grouped by the cluster node that owns them (one group for a
        single server), so a dead node costs only its own keys."""
        if not isinstance(self.client, RedisCluster):
            return [list(range(len(keys)))]
        groups: dict[str, list[int]] = {}
        for n, key in enumerate(keys):
            try:
                node = self.client.get_node_from_key(key).name  # type: ignore[no-untyped-call]
            except (redis.RedisError, OSError, AttributeError):
                node = ""  # no known owner: its own group, which fails alone
            groups.setdefault(node, []).append(n)
        return list(groups.values())

    def ping(self) -> bool:
        """True when Redis answers; never raises."""
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False
