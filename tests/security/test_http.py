"""The HTTP server under attack: label cardinality, body framing, odd strings and numbers,
secrets in logs, offline docs and the limits the OpenAPI schema declares. A real uvicorn on
loopback over the tiny stack."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from rerank import Reranker
from serving.http import create_app
from serving.recommender import Recommender
from serving.schemas import ServerLimits
from tests.live import LiveServer, Stack, make_server

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 4096


@pytest.fixture(scope="module")
def secured(stack: Stack) -> Iterator[LiveServer]:
    with make_server(stack, token=TOKEN, limits=ServerLimits(max_body_bytes=LIMIT)) as live:
        yield live


def _series(metrics: str) -> list[str]:
    return sorted(
        line for line in metrics.splitlines() if line.startswith("duorank_requests_total")
    )


def _count(metrics: str, route: str, status: str) -> float:
    pattern = rf'duorank_requests_total\{{route="{re.escape(route)}",status="{status}"\}} (\S+)'
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


def test_unknown_paths_do_not_grow_the_metrics(secured: LiveServer) -> None:
    """Case 1: 400 distinct unauthenticated paths add no series; raw paths never appear."""
    with httpx.Client(base_url=secured.url) as client:
        for n in range(20):  # the 'other' series exist after this
            client.get(f"/probe-{n}-" + "x" * 200)
            client.post(f"/probe-{n}", content=b"{}")
        client.get("/metrics", headers=AUTH)  # its own series, counted after it answers
        before = _series(client.get("/metrics", headers=AUTH).text)
        for n in range(400):
            client.get(f"/attack-{n}-" + "y" * 2000)
        after_text = client.get("/metrics", headers=AUTH).text
    after = _series(after_text)
    assert [re.sub(r" \S+$", "", s) for s in after] == [re.sub(r" \S+$", "", s) for s in before]
    assert "attack-" not in after_text and "probe-" not in after_text
    assert _count(after_text, "other", "401") >= 420


def test_known_routes_are_labelled_by_template(secured: LiveServer) -> None:
    httpx.post(f"{secured.url}/recommend", json={"user_id": "u1", "k": 2}, headers=AUTH)
    text = httpx.get(f"{secured.url}/metrics", headers=AUTH).text
    assert _count(text, "/recommend", "200") >= 1


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        part = min(size, total - sent)
        yield b" " * part
        sent += part


@pytest.mark.parametrize("route", ["/recommend", "/score", "/healthz", "/metrics", "/nowhere"])
def test_a_chunked_body_over_the_limit_is_refused(secured: LiveServer, route: str) -> None:
    """Case 2: no Content-Length (chunked framing), one byte over the limit: 413 on every route."""
    r = httpx.post(
        f"{secured.url}{route}",
        content=_chunks(LIMIT + 1),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413, r.text
    assert str(LIMIT) in r.json()["detail"]


def test_a_chunked_body_at_the_limit_is_read(secured: LiveServer) -> None:
    body = b'{"user_id": "u1", "k": 2}'
    padded = body + b" " * (LIMIT - len(body))
    r = httpx.post(
        f"{secured.url}/recommend",
        content=iter([padded[:1000], padded[1000:]]),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


def test_a_large_chunked_body_never_reaches_the_app(secured: LiveServer) -> None:
    """50 MB sent chunked: refused after the first LIMIT bytes (the client may see the reset)."""
    try:
        r = httpx.post(
            f"{secured.url}/recommend",
            content=_chunks(50 << 20, 64 << 10),
            headers={**AUTH, "content-type": "application/json"},
            timeout=30,
        )
    except httpx.HTTPError:
        pass  # the server answered 413 and closed while the client was still sending
    else:
        assert r.status_code == 413
    assert httpx.get(f"{secured.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        b'{"user_id": "\\ud800"}',
        b'{"user_id": "u1", "profile": {"\\udfff": "x"}}',
        b'{"history": [{"item_id": "\\ud800", "timestamp": 1}]}',
        b'{"user_id": "\\ud800", "k": "ten"}',
    ],
)
def test_a_lone_surrogate_is_a_counted_422(secured: LiveServer, payload: bytes) -> None:
    """Case 3: JSON can spell a lone surrogate; it is not text. 422, and the 422 is counted."""
    before = _count(httpx.get(f"{secured.url}/metrics", headers=AUTH).text, "/recommend", "422")
    r = httpx.post(
        f"{secured.url}/recommend",
        content=payload,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    after = _count(httpx.get(f"{secured.url}/metrics", headers=AUTH).text, "/recommend", "422")
    assert after == before + 1


def test_a_valid_surrogate_pair_is_text(secured: LiveServer) -> None:
    r = httpx.post(
        f"{secured.url}/recommend",
        content=b'{"user_id": "\\ud83d\\ude00"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 404 and "\U0001f600" in r.json()["detail"]


def test_an_unhandled_error_is_a_counted_500(stack: Stack) -> None:
    """Case 3, the other half: a 500 from an unhandled exception is counted too."""
    rec = Recommender(stack.root, stack.catalog, Reranker(stack.reranker))
    with LiveServer(create_app(rec)) as live:

        def explode(*args: object, **kwargs: object) -> object:
            raise RuntimeError("boom")

        rec.answer = explode  # type: ignore[method-assign]
        r = httpx.post(f"{live.url}/recommend", json={"user_id": "u1"})
        assert r.status_code == 500
        assert _count(httpx.get(f"{live.url}/metrics").text, "/recommend", "500") == 1


@pytest.mark.parametrize("rating", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_ratings_are_refused(secured: LiveServer, rating: str) -> None:
    """Case 4: Infinity would drive P(like) to 1; 422 naming the field, as the importer does."""
    body = f'{{"history": [{{"item_id": "1", "timestamp": 1, "rating": {rating}}}]}}'
    for route in ("/recommend", "/score"):
        payload = body if route == "/recommend" else body[:-1] + ', "item_ids": ["2"]}'
        r = httpx.post(
            f"{secured.url}{route}",
            content=payload,
            headers={**AUTH, "content-type": "application/json"},
        )
        assert r.status_code == 422, (route, r.text)
        assert ["body", "history", 0, "rating"] in [e["loc"] for e in r.json()["detail"]]


def test_a_token_in_the_query_string_is_not_logged(stack: Stack) -> None:
    """Case 8: uvicorn's access log prints the query string; secret parameters are masked."""
    recommender = Recommender(stack.root, stack.catalog, None)
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    live = LiveServer(create_app(recommender, token=TOKEN), log_level="info")
    handler = Collect()
    logging.getLogger("uvicorn.access").addHandler(handler)
    try:
        with live:
            for name in ("token", "access_token", "API_KEY"):
                httpx.get(f"{live.url}/healthz?x=1&{name}=hunter2&y=2")
    finally:
        logging.getLogger("uvicorn.access").removeHandler(handler)
    lines = [r for r in records if "/healthz?" in r]
    assert len(lines) == 3, records
    assert all("hunter2" not in line and "=***" in line and "y=2" in line for line in lines)


def test_docs_work_offline(secured: LiveServer) -> None:
    """Case 8: Swagger UI's assets come from the installed package, not a CDN."""
    html = httpx.get(f"{secured.url}/docs", headers=AUTH).text
    assert "cdn" not in html.lower()
    scripts = re.findall(r'src="([^"]+\.js)"', html) + re.findall(r'href="([^"]+\.css)"', html)
    assert scripts
    for asset in scripts:
        r = httpx.get(f"{secured.url}{asset}", headers=AUTH)
        assert r.status_code == 200 and len(r.content) > 1000, asset


def test_openapi_declares_limits_errors_and_metrics_type(secured: LiveServer) -> None:
    """Case 8: the schema states what the server enforces."""
    spec = httpx.get(f"{secured.url}/openapi.json", headers=AUTH).json()
    schemas = spec["components"]["schemas"]
    recommend = schemas["RecommendRequest"]["properties"]
    assert recommend["k"]["maximum"] == 100 and recommend["candidates"]["maximum"] == 1000
    assert schemas["ScoreRequest"]["properties"]["item_ids"]["maxItems"] == 1000
    for route in ("/recommend", "/score"):
        assert {"401", "404", "413", "422", "429"} <= set(spec["paths"][route]["post"]["responses"])
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
