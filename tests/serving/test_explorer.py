"""The explorer's routes over HTTP: the page loads without the token, its data does not
(unless --public-demo), item and user search, histories, the report, explanations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer, Stack, make_server

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    path = folder / "eval.json"
    methods = {
        "als": {"ndcg@10": 0.04, "recall@10": 0.08, "ndcg@10_ci95": [0.03, 0.05]},
        "ranking_stage": {"ndcg@10": 0.08, "seeds": {"ndcg@10_mean": 0.077}},
    }
    stage = {"ablation": {"ranker": {"ndcg@10": 0.1, "vs_first_stage": 1.6, "rounds": 19}}}
    body = {"dataset": {"path": "x"}, "methods": methods, "ranking_stage": stage}
    path.write_text(json.dumps({**body, "best_baseline": "als"}))
    (folder / "eval-recall.png").write_bytes(PNG)
    return path


@pytest.fixture(scope="module")
def secured(stack: Stack, report: Path) -> Iterator[LiveServer]:
    with make_server(stack, token=TOKEN, report=report) as live:
        yield live


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Iterator[LiveServer]:
    with make_server(stack, token=TOKEN, public_demo=True) as live:
        yield live


def test_the_page_loads_without_the_token_but_its_data_needs_it(secured: LiveServer) -> None:
    page = httpx.get(f"{secured.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and TOKEN not in page.text
    for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        r = httpx.get(f"{secured.url}/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert httpx.get(f"{secured.url}/static/index.html").status_code == 401  # not an asset
    for path in ("/items?q=film", "/users?q=u", "/users/u1", "/report"):
        assert httpx.get(f"{secured.url}{path}").status_code == 401, path
        assert httpx.get(f"{secured.url}{path}", headers=AUTH).status_code == 200, path


def test_public_demo_opens_the_pages_data_and_recommend_only(demo: LiveServer) -> None:
    assert httpx.get(f"{demo.url}/items?q=film").status_code == 200
    assert httpx.get(f"{demo.url}/users/u1").status_code == 200
    r = httpx.post(f"{demo.url}/recommend", json={"user_id": "u1", "k": 3})
    assert r.status_code == 200
    score = httpx.post(f"{demo.url}/score", json={"user_id": "u1", "item_ids": ["1"]})
    assert score.status_code == 401
    assert httpx.get(f"{demo.url}/metrics").status_code == 401
    assert httpx.get(f"{demo.url}/recommendations").status_code == 401  # a prefix is not a path


def test_item_and_user_search(secured: LiveServer, stack: Stack) -> None:
    r = httpx.get(f"{secured.url}/items", params={"q": "FILM 1", "limit": 5}, headers=AUTH)
    items = r.json()["items"]
    assert len(items) == 5 and all("film 1" in i["title"].lower() for i in items)
    assert items[0] == {
        "item_id": "1",
        "title": "Film 1",
        "genres": list(stack.catalog.items["1"].genres),
    }
    assert httpx.get(f"{secured.url}/items", params={"q": ""}, headers=AUTH).status_code == 422
    # a misspelt or unknown parameter is refused by name, never ignored
    for path, params in (("/items", {"q": "Film", "limt": "5"}), ("/users/u1", {"": "0"})):
        r = httpx.get(f"{secured.url}{path}", params=params, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "query", r.text
    users = httpx.get(f"{secured.url}/users", params={"q": "u1"}, headers=AUTH).json()["users"]
    assert users == [{"user_id": "u1", "events": 8}]
    history = httpx.get(f"{secured.url}/users/u1", headers=AUTH).json()
    times = [e["timestamp"] for e in history["history"]]
    assert history["events"] == 8 and times == sorted(times, reverse=True)
    assert {e["item_id"] for e in history["history"]} == set(
        stack.catalog.interactions.item_ids[stack.catalog.interactions.user_ids == "u1"].tolist()
    )
    assert httpx.get(f"{secured.url}/users/nobody", headers=AUTH).status_code == 404


def test_the_report_and_its_plots(secured: LiveServer, demo: LiveServer) -> None:
    body = httpx.get(f"{secured.url}/report", headers=AUTH).json()
    assert [m["method"] for m in body["methods"]] == ["als", "ranking_stage"]
    assert body["methods"][1]["seeds_mean"] == 0.077 and body["best_baseline"] == "als"
    assert body["ablation"] == [
        {"variant": "ranker", "ndcg@10": 0.1, "vs_first_stage": 1.6, "rounds": 19}
    ]
    assert body["plots"] == ["recall"]  # the calibration plot is not there
    png = httpx.get(f"{secured.url}/report/plots/recall", headers=AUTH)
    assert png.status_code == 200 and png.content == PNG
    for name in ("calibration", "..%2Feval", "eval"):
        assert httpx.get(f"{secured.url}/report/plots/{name}", headers=AUTH).status_code == 404
    assert httpx.get(f"{demo.url}/report").status_code == 404  # this server has no report


def test_recommend_explains_when_asked(secured: LiveServer, stack: Stack) -> None:
    plain = httpx.post(
        f"{secured.url}/recommend", json={"user_id": "u1", "k": 5}, headers=AUTH
    ).json()
    assert all(i["explanation"] is None for i in plain["items"])
    r = httpx.post(
        f"{secured.url}/recommend", json={"user_id": "u1", "k": 5, "explain": True}, headers=AUTH
    )
    body = r.json()
    assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in plain["items"]]
    watched = set(
        stack.catalog.interactions.item_ids[stack.catalog.interactions.user_ids == "u1"].tolist()
    )
    ranks = []
    for item in body["items"]:
        why = item["explanation"]
        assert why["sources"] == ["tower"] and why["features"] == []
        assert {b["item_id"] for b in why["because"]} <= watched and why["because"]
        assert all(0 < b["share"] <= 1 for b in why["because"])
        assert item["genres"] == list(stack.catalog.items[item["item_id"]].genres)
        ranks.append(why["first_stage_rank"])
    assert len(set(ranks)) == len(ranks) and min(ranks) >= 1
    first = httpx.post(
        f"{secured.url}/recommend",
        json={"user_id": "u1", "k": 5, "explain": True, "second_stage": False},
        headers=AUTH,
    ).json()
    assert first["served_by"] == "first stage"
    assert first["served_because"] == "second_stage is false in the request"
    assert [i["explanation"]["first_stage_rank"] for i in first["items"]] == [1, 2, 3, 4, 5]
