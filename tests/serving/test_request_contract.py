"""The request contract a client can trust (issue 33, defect 6): ids are names, so ``42`` is
read as ``"42"``; what a call ignores is named in ``warnings``; a misspelt field is a 422
naming it, never silently ignored."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from catalog.text import HistoryEvent
from serving.recommender import Recommender
from tests.live import LiveServer, Stack, make_server

pytestmark = pytest.mark.slow

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live(stack: Stack) -> Iterator[LiveServer]:
    with make_server(stack, token=TOKEN) as server:
        yield server


def _post(live: LiveServer, route: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{live.url}{route}", json=body, headers=AUTH)


def test_numeric_ids_are_read_as_ids(live: LiveServer, stack: Stack) -> None:
    as_text = _post(live, "/recommend", {"history": [{"item_id": "3", "timestamp": 1}], "k": 3})
    as_number = _post(live, "/recommend", {"history": [{"item_id": 3, "timestamp": 1}], "k": 3})
    assert as_number.status_code == 200, as_number.text
    assert [i["item_id"] for i in as_number.json()["items"]] == [
        i["item_id"] for i in as_text.json()["items"]
    ]
    scored = _post(live, "/score", {"history": [{"item_id": 3}], "item_ids": [1, "2"]})
    assert scored.status_code == 200 and [i["item_id"] for i in scored.json()["items"]] == [
        "1",
        "2",
    ]
    unknown_user = _post(live, "/recommend", {"user_id": 424242})
    assert unknown_user.status_code == 404 and "424242" in unknown_user.text


def test_booleans_are_not_ids(live: LiveServer) -> None:
    r = _post(live, "/recommend", {"user_id": True})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "user_id"]


def test_ignored_history_items_are_named_in_warnings(live: LiveServer) -> None:
    history = [{"item_id": "3", "timestamp": 1}, {"item_id": "no-such-film", "timestamp": 2}]
    r = _post(live, "/recommend", {"history": history, "k": 3, "allow": ["1", "2", "nope"]})
    assert r.status_code == 200
    warnings = r.json()["warnings"]
    assert warnings[0].startswith("history[1].item_id 'no-such-film' is not in the catalog")
    assert warnings[1] == "allow: 1 item id(s) not in the catalog: ignored"
    clean = _post(live, "/recommend", {"user_id": "u1", "k": 3})
    assert clean.json()["warnings"] == []


def test_a_misspelt_field_is_a_422_naming_it(live: LiveServer) -> None:
    for body, loc in (
        ({"user_id": "u1", "kk": 3}, ["body", "kk"]),
        (
            {"user_id": "u1", "history": [{"item_id": "1", "ratnig": 5}]},
            ["body", "history", 0, "ratnig"],
        ),
        ({"user_id": "u1", "item_ids": ["1"], "explain": True}, ["body", "explain"]),
    ):
        route = "/score" if "item_ids" in body else "/recommend"
        r = _post(live, route, body)
        assert r.status_code == 422, body
        assert [e["loc"] for e in r.json()["detail"]] == [loc]
        assert r.json()["detail"][0]["type"] == "extra_forbidden"


def test_the_python_api_warns_too(stack: Stack) -> None:
    rec = Recommender(stack.root, stack.catalog)
    result = rec.recommend(history=[HistoryEvent("ghost", 1, 5.0, None)], k=2)
    assert result.warnings == ["history[0].item_id 'ghost' is not in the catalog: ignored"]
