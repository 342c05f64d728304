"""POST /events on a real server on loopback: an accepted event is in the user's next
/recommend, a retry is counted once, bad events are 422s naming the field, and the route is
never open without the token, public demo or not."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from catalog.history import group_histories
from online import UserStore
from online.users import catalog_records
from retrieval.redis_client import connect
from tests.live import LiveServer, Stack, make_server

TOKEN = "events-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def live(stack: Stack, redis_url: str, namespace: str) -> Iterator[LiveServer]:
    store = UserStore(redis.Redis.from_url(redis_url), namespace=namespace)
    store.write(catalog_records(group_histories(stack.catalog.interactions), {}))
    with make_server(stack, token=TOKEN, users=store) as server:
        yield server


def test_an_event_reaches_the_users_next_call(live: LiveServer, stack: Stack) -> None:
    user = "u2"
    history = group_histories(stack.catalog.interactions)[user]
    body = {"user_id": user, "k": 5, "second_stage": False}
    before = httpx.post(f"{live.url}/recommend", json=body, headers=AUTH).json()
    taken = before["items"][0]["item_id"]
    event = {"event_id": "e-1", "user_id": user, "item_id": taken, "timestamp": 10**6, "rating": 5}
    r = httpx.post(f"{live.url}/events", json={"events": [event]}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}
    after = httpx.post(f"{live.url}/recommend", json=body, headers=AUTH).json()
    assert taken not in {i["item_id"] for i in after["items"]}
    sent = [
        {"item_id": e.item_id, "timestamp": e.timestamp, "rating": e.rating} for e in history
    ] + [{"item_id": taken, "timestamp": 10**6, "rating": 5}]
    explicit = httpx.post(
        f"{live.url}/recommend", json={**body, "history": sent}, headers=AUTH
    ).json()
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in explicit["items"]]

    again = httpx.post(
        f"{live.url}/events", json={"events": [event, {**event, "event_id": "e-2"}]}, headers=AUTH
    )
    assert again.json() == {"accepted": 1, "duplicates": 1}
    metrics = httpx.get(f"{live.url}/metrics", headers=AUTH).text
    assert 'duorank_live_events_total{outcome="accepted"} 2.0' in metrics
    assert 'duorank_live_events_total{outcome="duplicate"} 1.0' in metrics


@pytest.mark.parametrize(
    ("event", "where"),
    [
        ({"item_id": "no-such-item"}, ["body", "events", 0, "item_id"]),
        ({"timestamp": True}, ["body", "events", 0, "timestamp"]),
        ({"rating": 7}, ["body", "events", 0, "rating"]),
        ({"event_id": ""}, ["body", "events", 0, "event_id"]),
        ({"colour": "red"}, ["body", "events", 0, "colour"]),
    ],
)
def test_a_bad_event_is_a_422_naming_the_field(
    live: LiveServer, event: dict[str, object], where: list[object]
) -> None:
    good = {"event_id": "e", "user_id": "u1", "item_id": "3", "timestamp": 5}
    r = httpx.post(f"{live.url}/events", json={"events": [{**good, **event}]}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == where


def test_events_need_the_token_and_a_store(stack: Stack) -> None:
    event = {"event_id": "e", "user_id": "u1", "item_id": "3", "timestamp": 5}
    with make_server(stack, token=TOKEN, public_demo=True) as demo:
        assert httpx.post(f"{demo.url}/events", json={"events": [event]}).status_code == 401
        r = httpx.post(f"{demo.url}/events", json={"events": [event]}, headers=AUTH)
        assert r.status_code == 409 and "--user-store" in r.json()["detail"]


def test_the_explorer_searches_and_shows_users_through_the_store(live: LiveServer) -> None:
    event = {"event_id": "s-1", "user_id": "zz-walk-in", "item_id": "3", "timestamp": 7}
    httpx.post(f"{live.url}/events", json={"events": [event]}, headers=AUTH)
    r = httpx.get(f"{live.url}/users", params={"q": "zz"}, headers=AUTH)
    assert r.json() == {"users": [{"user_id": "zz-walk-in", "events": 1}]}
    history = httpx.get(f"{live.url}/users/zz-walk-in", headers=AUTH).json()
    assert [e["item_id"] for e in history["history"]] == ["3"]
    assert httpx.get(f"{live.url}/users/u1", headers=AUTH).json()["events"] == 8


def test_a_store_that_does_not_answer_is_a_503_to_retry(stack: Stack) -> None:
    # the bounded client serving builds (redis-py's default retries back off for seconds)
    dead = UserStore(connect("redis://127.0.0.1:1", connect_timeout=0.2))
    event = {"event_id": "e", "user_id": "u1", "item_id": "3", "timestamp": 5}
    with make_server(stack, token=TOKEN, users=dead) as live:
        r = httpx.post(f"{live.url}/events", json={"events": [event]}, headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "retry" in r.json()["detail"]
        # a user_id call is still served, from the dataset's history
        body = {"user_id": "u1", "k": 3, "second_stage": False}
        assert httpx.post(f"{live.url}/recommend", json=body, headers=AUTH).status_code == 200
