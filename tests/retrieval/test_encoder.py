"""The bundled MiniLM encoder, alone and through the Redis cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder, bundled_model_path, resolve_model
from retrieval.fingerprint import model_fingerprint
from retrieval.redis_client import connect

pytestmark = pytest.mark.slow


def test_unit_vectors_of_the_right_shape(encoder: Encoder) -> None:
    vectors = encoder.encode(["Toy Story (1995)", "Heat (1995)", "Toy Story (1995)"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert encoder.encode([]).shape == (0, 384)
    assert float(vectors[0] @ vectors[1]) < 0.99


def test_fingerprint_is_stable_and_stored(tmp_path: Path, encoder: Encoder) -> None:
    store = tmp_path / "fingerprints.json"
    value = model_fingerprint(bundled_model_path(), store)
    assert value == encoder.fingerprint and len(value) == 64
    assert value in store.read_text()
    copy = tmp_path / "model"
    import shutil

    shutil.copytree(bundled_model_path(), copy)
    assert model_fingerprint(copy) == value  # content, not location
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert model_fingerprint(copy) != value


def test_resolve_model_errors(tmp_path: Path) -> None:
    assert resolve_model(None) == str(bundled_model_path())
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_model(tmp_path / "file")


def _through(client: redis.Redis, encoder: Encoder, ns: str) -> None:
    cached = Encoder(device="cpu", cache=EmbeddingCache(client, namespace=ns))
    texts = [
        "Alien (1979). Genres: Horror, Sci-Fi",
        "Heat (1995)",
        "Alien (1979). Genres: Horror, Sci-Fi",
    ]
    before = cached.encoded
    first = cached.encode(texts)
    assert cached.encoded - before == 2  # duplicates encoded once
    second = cached.encode(texts)
    assert cached.encoded - before == 2  # all hits now
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, encoder.encode_uncached(texts), atol=1e-6)
    assert cached.cache is not None and cached.cache.stats.hits == 2
    # A corrupted value is recomputed and overwritten.
    key = cached.cache.key(cached.fingerprint, "Heat (1995)")
    client.set(key, b"garbage")
    third = cached.encode(["Heat (1995)"])
    np.testing.assert_allclose(third[0], first[1], atol=1e-6)
    assert len(client.get(key)) == 384 * 4  # type: ignore[arg-type]


def test_through_external_redis(redis_url: str, namespace: str, encoder: Encoder) -> None:
    _through(connect(redis_url), encoder, namespace)


def test_through_embedded_redis(embedded_redis: object, encoder: Encoder) -> None:
    _through(embedded_redis.client(), encoder, "emb-test")  # type: ignore[attr-defined]


def test_dead_redis_still_encodes_correctly(encoder: Encoder) -> None:
    dead = connect("redis://127.0.0.1:1", socket_timeout=0.1, connect_timeout=0.1, retries=0)
    cached = Encoder(device="cpu", cache=EmbeddingCache(dead))
    vectors = cached.encode(["Heat (1995)"])
    np.testing.assert_allclose(vectors, encoder.encode_uncached(["Heat (1995)"]), atol=1e-6)
    assert cached.cache is not None and cached.cache.stats.errors >= 1
