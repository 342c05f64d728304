"""The HTTP API against a real uvicorn on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import random
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer import IndexRoot
from serving.schemas import ServerLimits
from tests.live import LiveServer, Stack, make_server

pytestmark = pytest.mark.slow


def test_recommend_for_a_known_user(server: LiveServer, stack: Stack) -> None:
    r = httpx.post(f"{server.url}/recommend", json={"user_id": "u1", "k": 5, "candidates": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 5 and body["served_by"] == "cross-encoder"
    assert body["index_version"] == stack.versions[0]
    probs = [i["p_like"] for i in body["items"]]
    assert probs == sorted(probs, reverse=True)
    seen = set(stack.catalog.interactions.item_ids[stack.catalog.interactions.user_ids == "u1"])
    assert not seen & {i["item_id"] for i in body["items"]}
    assert set(body["timings_ms"]) >= {"embed", "retrieve", "rerank"}


def test_recommend_for_a_new_user_from_history_and_cold_user(server: LiveServer) -> None:
    history = [{"item_id": "3", "timestamp": 1, "rating": 5}, {"item_id": "7", "timestamp": 2}]
    r = httpx.post(f"{server.url}/recommend", json={"history": history, "k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert {"3", "7"}.isdisjoint(i["item_id"] for i in r.json()["items"])
    cold = httpx.post(f"{server.url}/recommend", json={"history": [], "k": 3})
    assert cold.status_code == 200 and cold.json()["fallback"] == "popularity"


def test_score_and_errors(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/score", json={"user_id": "u2", "item_ids": ["1", "2"]})
    assert r.status_code == 200
    assert [i["item_id"] for i in r.json()["items"]] == ["1", "2"]
    assert all(0 < i["p_like"] < 1 for i in r.json()["items"])
    missing = httpx.post(f"{server.url}/score", json={"user_id": "u2", "item_ids": ["zzz"]})
    assert missing.status_code == 404 and "zzz" in missing.text
    unknown = httpx.post(f"{server.url}/recommend", json={"user_id": "nobody"})
    assert unknown.status_code == 404 and "nobody" in unknown.text
    too_many = httpx.post(f"{server.url}/recommend", json={"user_id": "u1", "k": 101})
    assert too_many.status_code == 422 and "k" in too_many.text
    bad_type = httpx.post(f"{server.url}/recommend", json={"user_id": "u1", "k": "ten"})
    assert bad_type.status_code == 422 and "k" in bad_type.text
    huge = httpx.post(
        f"{server.url}/recommend",
        content=b"x" * (2 << 20),
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413


def test_health_ready_metrics_docs(server: LiveServer, stack: Stack) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["index_version"] in stack.versions
    httpx.post(f"{server.url}/recommend", json={"user_id": "u1"})
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "duorank_stage_seconds_bucket" in metrics and 'stage="rerank"' in metrics
    assert "duorank_index_version_info" in metrics
    assert httpx.get(f"{server.url}/openapi.json").json()["paths"]["/recommend"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


@pytest.fixture(scope="module")
def secured(stack: Stack):  # type: ignore[no-untyped-def]
    with make_server(stack, token="s3cret") as live:
        yield live


def test_auth_without_token_is_refused(secured: LiveServer) -> None:
    assert httpx.post(f"{secured.url}/recommend", json={"user_id": "u1"}).status_code == 401


def test_auth_with_wrong_token_is_refused(secured: LiveServer) -> None:
    r = httpx.post(
        f"{secured.url}/recommend", json={"user_id": "u1"}, headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401


def test_auth_with_right_token_is_served(secured: LiveServer) -> None:
    r = httpx.post(
        f"{secured.url}/recommend",
        json={"user_id": "u1"},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert r.status_code == 200


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
_payload = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.sampled_from(["u1", "u2", "ghost", ""]) | st.text(max_size=5) | _json,
        "history": st.lists(
            st.fixed_dictionaries(
                {"item_id": st.sampled_from(["1", "2", "x"])},
                optional={"timestamp": st.integers(-5, 5), "rating": st.floats(0, 5) | _json},
            ),
            max_size=5,
        )
        | _json,
        "k": st.integers(-3, 200) | _json,
        "candidates": st.integers(-3, 2000) | _json,
        "allow": st.lists(st.sampled_from(["1", "2", "3", "zz"]), max_size=4) | _json,
        "item_ids": st.lists(st.sampled_from(["1", "2", "zz"]), max_size=4) | _json,
        "profile": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2) | _json,
        "explain": st.booleans() | _json,
        "second_stage": st.booleans() | _json,
    },
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=_payload, route=st.sampled_from(["/recommend", "/score"]))
def test_fuzzed_requests_never_5xx(server: LiveServer, payload: dict, route: str) -> None:
    r = httpx.post(
        f"{server.url}{route}",
        content=json.dumps(payload),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code < 500, (payload, r.text)


def test_twenty_index_swaps_under_load(stack: Stack) -> None:
    limits = ServerLimits(reload_interval_s=0.02, max_in_flight=2, max_queue=64)
    with make_server(stack, limits=limits) as live:
        store = IndexRoot(stack.root)
        stop = time.monotonic() + 120
        results: list[tuple[int, str | None]] = []

        def client() -> None:
            with httpx.Client(timeout=30) as c:
                while time.monotonic() < stop and len(results) < 400:
                    r = c.post(
                        f"{live.url}/recommend",
                        json={
                            "user_id": random.choice(["u1", "u2", "u3"]),
                            "k": 3,
                            "candidates": 10,
                        },
                    )
                    body = r.json()
                    results.append((r.status_code, body.get("index_version")))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client) for _ in range(3)]
            served = set()
            for n in range(20):
                target = stack.versions[(n + 1) % len(stack.versions)]
                store.set_current(target)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if httpx.get(f"{live.url}/readyz").json()["index_version"] == target:
                        break
                    time.sleep(0.01)
                served.add(target)
            stop = time.monotonic()
            for f in futures:
                f.result()
        assert results and all(status == 200 for status, _ in results)
        assert {v for _, v in results} <= set(stack.versions)
        assert served == set(stack.versions)


def test_bad_new_version_is_refused_and_old_keeps_serving(stack: Stack) -> None:
    limits = ServerLimits(reload_interval_s=0.02)
    with make_server(stack, limits=limits) as live:
        store = IndexRoot(stack.root)
        bad = stack.versions[2]
        path = stack.root / "versions" / bad / "ids.json"
        original = path.read_bytes()
        try:
            path.write_bytes(original.replace(b'"1"', b'"x"'))
            store.set_current(bad)
            time.sleep(0.3)
            r = httpx.post(f"{live.url}/recommend", json={"user_id": "u1"})
            assert r.status_code == 200 and r.json()["index_version"] == stack.versions[0]
            assert (
                'duorank_index_reloads_total{outcome="refused"}'
                in httpx.get(f"{live.url}/metrics").text
            )
        finally:
            path.write_bytes(original)
            store.set_current(stack.versions[0])


def test_overload_gives_fast_429_not_errors(stack: Stack) -> None:
    with make_server(stack, limits=ServerLimits(max_in_flight=1, max_queue=0)) as live:

        def call(_: int) -> int:
            return httpx.post(
                f"{live.url}/recommend", json={"user_id": "u1", "candidates": 40}, timeout=30
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(24)))
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes


class _BrokenReranker:
    """A reranker whose model fails at scoring time (say, a corrupt ONNX file on a new node)."""

    def __init__(self, real: object) -> None:
        self.config = real.config  # type: ignore[attr-defined]

    def score(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("model failed")


def test_reranker_failure_serves_retrieval_order(stack: Stack) -> None:
    from rerank import Reranker
    from serving.http import create_app
    from serving.recommender import Recommender
    from tests.live import LiveServer

    IndexRoot(stack.root).set_current(stack.versions[0])
    broken = _BrokenReranker(Reranker(stack.reranker))
    with LiveServer(create_app(Recommender(stack.root, stack.catalog, broken))) as live:
        r = httpx.post(f"{live.url}/recommend", json={"user_id": "u1", "k": 5})
        assert r.status_code == 200
        body = r.json()
        assert body["fallback"] == "rerank_failed" and body["served_by"] == "first stage"
        scores = [i["first_stage_score"] for i in body["items"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert 'kind="rerank_failed"' in httpx.get(f"{live.url}/metrics").text
