"""The ranking stage's requests: a history is cut at the request's time once, when it is made."""

from __future__ import annotations


def test_a_request_holds_only_the_events_before_its_time() -> None:
    from catalog.text import HistoryEvent
    from rerank.ranker.features import Request

    events = [HistoryEvent("a", 10), HistoryEvent("b", 20), HistoryEvent("c", 30)]
    request = Request("u", events, 20)
    assert [e.item_id for e in request.history] == ["a"]  # its own second and later: cut
    assert [e.item_id for e in Request("u", events, 31).history] == ["a", "b", "c"]
