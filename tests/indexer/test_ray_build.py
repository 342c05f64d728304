"""`index build --engine ray`: the encoding step on Ray Data actors against a local Ray started
here (2 CPUs), the real Redis cache and the bundled MiniLM; the published version equals the
local build's (ids, vectors to float tolerance, manifest fields except timing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from catalog.model import Item
from indexer import BuildConfig, IndexBuild, IndexRoot
from indexer.ray_engine import RayEngine
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.redis_client import connect

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the ray extra (pip install duorank[ray])")


def _items() -> dict[str, Item]:
    genres = ("Drama", "Comedy", "Horror")
    items = {
        str(n): Item(str(n), f"Film {n}", f"A story number {n}.", (genres[n % 3],))
        for n in range(37)
    }
    # No text: skipped by both engines (in the middle, so the Ray rows around it move up).
    return {**dict(list(items.items())[:20]), "empty": Item("empty", ""), **items}


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what differs between any two builds (ids, times, file hashes)."""
    out = {k: v for k, v in manifest.items() if k not in ("version", "created_at", "files")}
    out["build"] = {k: v for k, v in manifest["build"].items() if k != "seconds"}
    out["files"] = sorted(manifest["files"])
    return out


def test_the_ray_build_publishes_what_the_local_build_does(
    local_ray: None, tmp_path: Path, encoder: Encoder, redis_url: str, namespace: str
) -> None:
    items = _items()
    built = {}
    for engine in ("local", "ray"):
        # The Ray build spills its vectors to a staging file (what a large catalog does).
        config = BuildConfig(batch_size=8, spill_items=0 if engine == "ray" else 1_000)
        ns = f"{namespace}:{engine}"  # each build starts from an empty cache
        cache = EmbeddingCache(connect(redis_url), namespace=ns)
        cached = Encoder(encoder.model_name, device="cpu", cache=cache)
        runner = (
            RayEngine(workers=2, redis_url=redis_url, namespace=ns) if engine == "ray" else None
        )
        root = tmp_path / engine
        manifest = IndexBuild(root, cached, config, engine=runner).run(
            items, source={"test": True}, source_hash="h", progress=False
        )
        index, _ = IndexRoot(root).load(manifest["version"])
        built[engine] = (manifest, index)
    (local, local_index), (remote, ray_index) = built["local"], built["ray"]
    assert _comparable(remote) == _comparable(local)
    assert remote["build"]["encoded"] == 37 and remote["build"]["skipped_empty"] == 1
    assert ray_index.ids == local_index.ids and "empty" not in ray_index.ids
    np.testing.assert_allclose(
        ray_index.reconstruct(np.arange(len(ray_index))),
        local_index.reconstruct(np.arange(len(local_index))),
        atol=1e-5,
    )
    # The actors wrote the cache under the driver's model fingerprint: the driver's own
    # encoder now finds every vector there and runs the model on none.
    client = redis.Redis.from_url(redis_url)
    assert len(list(client.scan_iter(f"{namespace}:ray:*"))) == 37
    reader = Encoder(
        encoder.model_name,
        device="cpu",
        cache=EmbeddingCache(connect(redis_url), namespace=f"{namespace}:ray"),
    )
    texts = [config.template.render(items[i]) for i in ray_index.ids]
    np.testing.assert_allclose(
        reader.encode(texts), ray_index.reconstruct(np.arange(37)), atol=1e-5
    )
    assert reader.encoded == 0 and reader.cache.stats.hits == 37


def test_a_remote_cluster_cannot_use_the_embedded_redis() -> None:
    with pytest.raises(ValueError, match="unix socket"):
        RayEngine(address="auto", redis_url="unix:///tmp/x.sock")
    with pytest.raises(ValueError, match="workers"):
        RayEngine(workers=0)
