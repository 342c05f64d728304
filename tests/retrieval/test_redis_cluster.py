"""The embedding cache on a real Redis Cluster: three masters started from the Debian
redis-server binary on loopback ports and joined with `redis-cli --cluster create`. Keys
spread over the nodes; reads and writes go node by node; a master killed in the middle of an
index build costs that node's keys as misses, never an error, and the build completes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from catalog.model import Item
from indexer import BuildConfig, IndexBuild, IndexRoot
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.redis_client import client_url, connect
from tests.live import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster.running(tmp_path) as c:
        yield c


def test_a_cluster_url_gives_a_cluster_client_and_keys_spread_over_the_nodes(
    cluster: Cluster,
) -> None:
    client = connect(cluster.url)
    assert isinstance(client, RedisCluster)
    assert client_url(client) == cluster.url  # what a worker process connects with
    cache = EmbeddingCache(client, chunk_size=16)
    texts = [f"item {n}" for n in range(60)]
    vectors = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    assert cache.put_many("fp", texts, vectors) == 60
    per_node = cluster.keys_per_node()
    assert sum(per_node) == 60 and min(per_node) > 0  # no cross-slot MGET could read these
    got = cache.get_many("fp", [*texts, "never stored"], 8)
    np.testing.assert_array_equal(np.stack([g for g in got[:60] if g is not None]), vectors)
    assert got[60] is None
    assert cache.stats.hits == 60 and cache.stats.misses == 1 and cache.stats.errors == 0
    with pytest.raises(
        redis.ConnectionError, match=r"Redis Cluster at redis\+cluster://127\.0\.0\.1"
    ):
        connect("redis+cluster://127.0.0.1:1")  # nothing listens there: named, not a hang


def test_a_master_killed_mid_build_costs_misses_and_the_build_completes(
    cluster: Cluster, tmp_path: Path, encoder: Encoder
) -> None:
    cache = EmbeddingCache(connect(cluster.url), chunk_size=8)
    cached = Encoder(encoder.model_name, device="cpu", cache=cache)
    items = {str(n): Item(str(n), f"Film {n}", genres=("Drama",)) for n in range(48)}
    root = tmp_path / "index"
    first = IndexBuild(root, cached, BuildConfig(keep=3)).run(
        items, source={}, source_hash="a", progress=False
    )
    assert sum(cluster.keys_per_node()) == 48

    # The second build reads every vector from the cache, 16 items a batch; one master dies
    # after the first batch's lookups.
    killed: list[int] = []
    original = cache.get_many

    def get_then_kill(*args: object, **kwargs: object) -> object:
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        if not killed:
            cluster.nodes[1].stop()
            killed.append(cluster.nodes[1].port)
        return out

    cache.get_many = get_then_kill  # type: ignore[method-assign]
    before = cache.stats.as_dict()
    changed = {**items, "48": Item("48", "Film 48", genres=("Comedy",))}
    second = IndexBuild(root, cached, BuildConfig(keep=3, batch_size=16)).run(
        changed, source={}, source_hash="b", progress=False
    )
    after = cache.stats.as_dict()
    assert killed and second["version"] != first["version"]
    assert after["errors"] > before["errors"]  # the dead node's keys: counted, then misses
    assert after["hits"] > before["hits"]  # the live nodes still answered
    published = IndexRoot(root)
    assert published.current() == second["version"]
    index, _ = published.load(second["version"])
    old, _ = published.load(first["version"])
    ids = [str(n) for n in range(48)]
    np.testing.assert_allclose(
        index.reconstruct([index.position(i) for i in ids]),
        old.reconstruct([old.position(i) for i in ids]),
        atol=1e-5,
    )
