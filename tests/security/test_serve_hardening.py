"""Hardening 2 over HTTP and `duorank serve`: defects 2 (reload interval), 3 (public demo without
a token), 4 (timestamps past int64), 12 (user ids with ``/``), 13 (a report that is not one),
14 (security headers), 15 (secret masking bypasses) and 16 (the body contract). A real uvicorn
on loopback over the tiny stack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from catalog import Catalog, User
from duorank.cli import EXIT_USAGE, cli
from serving.guard import redact_query
from serving.http import create_app
from serving.recommender import Recommender
from serving.schemas import ServerLimits
from tests.live import LiveServer, Stack, make_server

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ODD_USER = "<b>x</b>"


@pytest.fixture(scope="module")
def secured(stack: Stack) -> Iterator[LiveServer]:
    with make_server(stack, token=TOKEN) as live:
        yield live


def _serve(tmp_path: Path, *args: str, token: str | None = None) -> tuple[int, str]:
    env = {"DUORANK_API_TOKEN": token} if token else {"DUORANK_API_TOKEN": ""}
    home = ("--home", str(tmp_path / "home"))
    where = ("--data", str(tmp_path / "none"), "--root", str(tmp_path / "none"))
    result = CliRunner().invoke(cli, [*home, "serve", *where, *args], env=env)
    return result.exit_code, result.output


# ---------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_a_reload_interval_that_would_busy_loop_is_refused(tmp_path: Path, interval: str) -> None:
    code, output = _serve(tmp_path, "--reload-interval", interval)
    assert code == EXIT_USAGE and "--reload-interval" in output, output
    with pytest.raises(ValueError, match="reload interval"):
        ServerLimits(reload_interval_s=float(interval))


def test_public_demo_without_a_token_is_refused(tmp_path: Path, stack: Stack) -> None:
    code, output = _serve(tmp_path, "--public-demo")
    assert code == EXIT_USAGE and "DUORANK_API_TOKEN" in output, output
    with pytest.raises(ValueError, match="needs a token"):
        create_app(Recommender(stack.root, stack.catalog), public_demo=True)


def test_public_demo_keeps_score_and_metrics_closed(stack: Stack) -> None:
    with make_server(stack, token=TOKEN, public_demo=True) as live:
        assert httpx.get(f"{live.url}/users/u1").status_code == 200
        for method, path in (("POST", "/score"), ("GET", "/metrics")):
            body = {"user_id": "u1", "item_ids": ["1"]} if method == "POST" else None
            r = httpx.request(method, f"{live.url}{path}", json=body)
            assert r.status_code == 401, path


def test_a_report_that_is_not_one_stops_serve_at_start(tmp_path: Path, stack: Stack) -> None:
    markdown = tmp_path / "report.md"
    markdown.write_text("| method | NDCG@10 |\n|---|---|\n| ranker | 0.08 |\n")
    code, output = _serve(tmp_path, "--report", str(markdown))
    assert code == EXIT_USAGE and f"{markdown}: not an evaluation report" in output, output
    with pytest.raises(ValueError, match="not an evaluation report"):
        create_app(Recommender(stack.root, stack.catalog), report=markdown)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="no 'methods' object"):
        create_app(Recommender(stack.root, stack.catalog), report=tmp_path / "list.json")


def test_a_report_damaged_after_start_answers_503_not_500(tmp_path: Path, stack: Stack) -> None:
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"methods": {"als": {"ndcg@10": 0.04}}}))
    app = create_app(Recommender(stack.root, stack.catalog), token=TOKEN, report=report)
    with LiveServer(app) as live:
        assert httpx.get(f"{live.url}/report", headers=AUTH).status_code == 200
        report.write_text("# now Markdown")
        assert httpx.get(f"{live.url}/report", headers=AUTH).status_code == 503


# ---------------------------------------------------------------------------- requests


@pytest.mark.parametrize("route", ["/score", "/recommend"])
@pytest.mark.parametrize("timestamp", [2**63 - 1, 2**63, -(2**63) - 1, 2**53 + 1])
def test_a_timestamp_past_the_bound_is_a_422_naming_it(
    secured: LiveServer, route: str, timestamp: int
) -> None:
    body: dict[str, object] = {"user_id": "42"}
    body.update({"item_ids": ["1"]} if route == "/score" else {"k": 3})
    body["history"] = [{"item_id": "1", "timestamp": timestamp, "rating": 5}]
    r = httpx.post(f"{secured.url}{route}", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "history", 0, "timestamp"]]


def test_the_schema_states_the_timestamp_and_rating_bounds(secured: LiveServer) -> None:
    spec = httpx.get(f"{secured.url}/openapi.json", headers=AUTH).json()
    event = spec["components"]["schemas"]["Event"]["properties"]
    assert event["timestamp"]["maximum"] == 2**53 and event["timestamp"]["minimum"] == -(2**53)
    assert event["rating"]["anyOf"][0]["maximum"] == 5


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
def test_a_body_in_another_unicode_encoding_is_400(secured: LiveServer, encoding: str) -> None:
    body = json.dumps({"user_id": "u1", "k": 3}).encode(encoding)
    headers = {**AUTH, "content-type": "application/json"}
    r = httpx.post(f"{secured.url}/recommend", content=body, headers=headers)
    assert r.status_code == 400 and "not UTF-8" in r.json()["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("k", True), ("candidates", "50"), ("k", 3.5), ("explain", "yes"), ("exclude_seen", 1)],
)
def test_types_are_strict(secured: LiveServer, field: str, value: object) -> None:
    r = httpx.post(f"{secured.url}/recommend", json={"user_id": "u1", field: value}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text


def test_history_label_and_timestamp_are_strict_too(secured: LiveServer) -> None:
    for event in ({"item_id": "1", "label": True}, {"item_id": "1", "timestamp": "5"}):
        body = {"history": [event], "k": 3}
        r = httpx.post(f"{secured.url}/recommend", json=body, headers=AUTH)
        assert r.status_code == 422, event


def test_a_user_id_with_a_slash_opens(stack: Stack) -> None:
    c = stack.catalog
    users = {**c.users, ODD_USER: User(ODD_USER), "a/b": User("a/b")}
    catalog = Catalog(c.items, users, c.interactions, source=c.source)
    app = create_app(Recommender(stack.root, catalog), token=TOKEN)
    with LiveServer(app) as live:
        for user, path in ((ODD_USER, "%3Cb%3Ex%3C%2Fb%3E"), ("a/b", "a%2Fb")):
            r = httpx.get(f"{live.url}/users/{path}", headers=AUTH)
            assert r.status_code == 200 and r.json()["user_id"] == user, r.text
        assert httpx.get(f"{live.url}/users/nobody%2Fhere", headers=AUTH).status_code == 404


# ---------------------------------------------------------------------------- responses


def test_every_response_carries_the_security_headers(secured: LiveServer) -> None:
    responses = {
        "page": httpx.get(f"{secured.url}/"),
        "401": httpx.get(f"{secured.url}/metrics"),
        "api": httpx.post(f"{secured.url}/recommend", json={"user_id": "u1"}, headers=AUTH),
        "probe": httpx.get(f"{secured.url}/healthz"),
        "docs": httpx.get(f"{secured.url}/docs", headers=AUTH),
    }
    for name, r in responses.items():
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert r.headers["x-frame-options"] == "DENY", name
        assert r.headers["referrer-policy"] == "no-referrer", name
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, name
    page_csp = responses["page"].headers["content-security-policy"]
    assert "unsafe-inline" not in page_csp  # the page has no inline script or style


@pytest.mark.parametrize(
    "query",
    ["tok%65n=S3CR", "t=1;token=S3CR", "token%3DS3CR", "x=1&%61pi_key=S3CR&y=2", "TOKEN=S3CR"],
)
def test_secret_masking_decodes_names_and_splits_on_semicolons(query: str) -> None:
    line = redact_query(f"/healthz?{query} HTTP/1.1")
    assert "S3CR" not in line and "***" in line and line.endswith(" HTTP/1.1")


def test_masking_keeps_other_parameters(secured: LiveServer) -> None:
    assert redact_query("/users?q=u1&limit=5") == "/users?q=u1&limit=5"
    assert redact_query("/h?a=1;token=x;b=2") == "/h?a=1;token=***;b=2"
