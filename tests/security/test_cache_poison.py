"""A poisoned embedding cache (case 6): a value that cannot be a stored vector is corrupt,
counted, recomputed and overwritten, and never blocks a build; a plausible but wrong vector is
found by the build's cache audit. Real Redis, the real bundled MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from catalog import Item, ItemTextTemplate
from indexer import BuildConfig, IndexBuild, IndexRoot
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.index import load_index

pytestmark = pytest.mark.slow

ITEMS = {
    str(i): Item(str(i), title, genres=(genre,))
    for i, (title, genre) in enumerate(
        [
            ("Alien (1979)", "Sci-Fi"),
            ("Heat (1995)", "Crime"),
            ("Amelie (2001)", "Romance"),
            ("Fargo (1996)", "Crime"),
            ("Up (2009)", "Animation"),
            ("Jaws (1975)", "Thriller"),
        ]
    )
}
TEMPLATE = ItemTextTemplate()


def _key(encoder: Encoder, item: str) -> str:
    assert encoder.cache is not None
    return encoder.cache.key(encoder.fingerprint, TEMPLATE.render(ITEMS[item]))


def _build(root: Path, encoder: Encoder, **cfg: object) -> dict:
    return IndexBuild(root, encoder, BuildConfig(**cfg)).run(  # type: ignore[arg-type]
        ITEMS, source={}, source_hash="x", progress=False
    )


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def cached(encoder: Encoder, client: redis.Redis, namespace: str) -> Encoder:
    """The session's model behind a fresh cache namespace, filled by one build."""
    enc = Encoder.__new__(Encoder)
    enc.__dict__.update(encoder.__dict__)
    enc.cache = EmbeddingCache(client, namespace=namespace)
    enc.encoded = 0
    return enc


def _truth(encoder: Encoder) -> np.ndarray:
    return encoder.encode_uncached([TEMPLATE.render(ITEMS[i]) for i in ITEMS])


@pytest.mark.parametrize(
    "poison",
    [
        np.full(384, np.nan, dtype="<f4").tobytes(),  # right length, NaN
        np.full(384, np.inf, dtype="<f4").tobytes(),
        (np.ones(384, dtype="<f4") * 3).tobytes(),  # finite, norm far from 1
        b"\x00" * 17,  # wrong length
    ],
    ids=["nan", "inf", "norm", "length"],
)
def test_a_poisoned_value_is_recomputed_and_overwritten(
    tmp_path: Path, cached: Encoder, client: redis.Redis, poison: bytes
) -> None:
    _build(tmp_path / "a", cached)
    client.set(_key(cached, "2"), poison)
    assert cached.cache is not None
    corrupt_before = cached.cache.stats.corrupt
    manifest = _build(tmp_path / "b", cached)
    assert cached.cache.stats.corrupt == corrupt_before + 1
    assert manifest["build"]["encoded"] == 1 and manifest["build"]["cache_hits"] == 5
    stored = np.frombuffer(client.get(_key(cached, "2")), dtype="<f4")  # type: ignore[arg-type]
    assert np.isfinite(stored).all() and abs(np.linalg.norm(stored) - 1) < 1e-4
    index = load_index(IndexRoot(tmp_path / "b").version_dir(manifest["version"]))
    np.testing.assert_allclose(index.reconstruct(np.arange(6)), _truth(cached), atol=1e-5)


def test_the_audit_finds_a_plausible_wrong_vector(
    tmp_path: Path, cached: Encoder, client: redis.Redis
) -> None:
    """A unit vector of another text under a key passes every value check; the audit sees it."""
    _build(tmp_path / "a", cached)
    client.set(_key(cached, "3"), client.get(_key(cached, "0")))  # type: ignore[arg-type]
    fooled = _build(tmp_path / "b", cached)
    assert fooled["build"]["cache_hits"] == 6  # nothing in the value gives it away
    audited = _build(tmp_path / "c", cached, verify_cache_sample=6)
    audit = audited["build"]["cache_audit"]
    assert audit["checked"] == 6 and audit["mismatched"] == 1 and audit["trusted"] is False
    assert audited["build"]["encoded"] == 6 + 6  # the audit's sample, then every item afresh
    index = load_index(IndexRoot(tmp_path / "c").version_dir(audited["version"]))
    np.testing.assert_allclose(index.reconstruct(np.arange(6)), _truth(cached), atol=1e-5)
    repaired = np.frombuffer(client.get(_key(cached, "3")), dtype="<f4")  # type: ignore[arg-type]
    np.testing.assert_allclose(repaired, _truth(cached)[3], atol=1e-6)
    clean = _build(tmp_path / "d", cached, verify_cache_sample=3)
    assert clean["build"]["cache_audit"]["mismatched"] == 0
    assert clean["build"]["cache_audit"]["trusted"] is True and clean["build"]["encoded"] == 3


def test_the_audit_is_off_by_default(tmp_path: Path, cached: Encoder) -> None:
    assert _build(tmp_path / "a", cached)["build"]["cache_audit"] is None
    with pytest.raises(ValueError, match="verify_cache_sample"):
        IndexBuild(tmp_path / "b", cached, BuildConfig(verify_cache_sample=-1))
