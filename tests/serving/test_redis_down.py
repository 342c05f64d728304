"""Degraded mode: the text user tower reads its embeddings through Redis; Redis stopping
mid-load must cost cache misses (counted in /metrics), never a 5xx, and recovery is automatic."""

from __future__ import annotations

import concurrent.futures
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from indexer import IndexRoot
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.redis_client import connect
from serving.http import create_app
from serving.recommender import Recommender
from serving.schemas import ServerLimits
from tests.live import LiveServer, RedisProcess, Stack

pytestmark = pytest.mark.slow


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def _cache_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'duorank_cache_lookups_total\{outcome="(\w+)"\} (\S+)', text)
    }


def _payload(n: int) -> dict[str, object]:
    items = [str((n * 7 + j) % 40) for j in range(3)]
    return {
        "history": [{"item_id": i, "timestamp": t, "rating": 5.0} for t, i in enumerate(items)],
        "k": 3,
        "candidates": 10,
    }


def test_redis_stopped_mid_load_gives_no_5xx_and_recovers(
    stack: Stack, private_redis: RedisProcess
) -> None:
    IndexRoot(stack.root).set_current(stack.versions[0])
    cache = EmbeddingCache(connect(private_redis.url), namespace=f"test:{uuid.uuid4().hex}")
    recommender = Recommender(
        stack.root, stack.catalog, None, user_encoder=Encoder(device="cpu", cache=cache)
    )
    limits = ServerLimits(max_in_flight=2, max_queue=64)
    with LiveServer(create_app(recommender, limits=limits)) as live:
        fixed = _payload(0)
        reference = httpx.post(f"{live.url}/recommend", json=fixed, timeout=30).json()["items"]
        assert httpx.post(f"{live.url}/recommend", json=fixed, timeout=30).status_code == 200
        before = _cache_counts(live.url)
        assert before["hits"] >= 1 and before["errors"] == 0  # the second call hit the cache

        statuses: list[int] = []

        def client(offset: int) -> None:
            with httpx.Client(timeout=30) as c:
                for n in range(offset, offset + 40, 2):  # new texts: every call needs Redis
                    statuses.append(c.post(f"{live.url}/recommend", json=_payload(n)).status_code)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(client, k) for k in (1, 2)]
            while len(statuses) < 10:
                time.sleep(0.01)
            private_redis.stop()  # mid-load
            for f in futures:
                f.result()
        assert len(statuses) == 40 and set(statuses) == {200}
        down = _cache_counts(live.url)
        assert down["errors"] > 0
        # Correct results without the cache: the same items as with it.
        r = httpx.post(f"{live.url}/recommend", json=fixed, timeout=30)
        assert r.status_code == 200 and r.json()["items"] == reference

        private_redis.start()  # same port, empty: recovery needs no restart of the service
        for _ in range(2):  # a miss that writes, then a hit
            assert httpx.post(f"{live.url}/recommend", json=fixed, timeout=30).status_code == 200
        after = _cache_counts(live.url)
        assert after["hits"] > down["hits"]
        errors_now = after["errors"]
        assert httpx.post(f"{live.url}/recommend", json=fixed, timeout=30).status_code == 200
        assert _cache_counts(live.url)["errors"] == errors_now
        metrics = httpx.get(f"{live.url}/metrics").text
        ratio = re.search(r"^duorank_cache_hit_ratio (\S+)$", metrics, re.MULTILINE)
        assert ratio is not None and 0 < float(ratio.group(1)) < 1
