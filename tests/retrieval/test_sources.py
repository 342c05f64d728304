"""Candidate sources and their merge: what each proposes, and that none reads the future."""

from __future__ import annotations

import numpy as np
import pytest

from catalog.text import HistoryEvent
from retrieval.index import FlatIndex
from retrieval.sources import (
    CoVisitationSource,
    FactorSource,
    Proposal,
    RecentPopularitySource,
    TowerSource,
    merge,
)
from retrieval.towers import MeanItemsTower
from retrieval.vectors import ItemVectors

ITEMS = [f"i{n}" for n in range(8)]


def _h(*items: str, start: int = 100, step: int = 10) -> list[HistoryEvent]:
    return [HistoryEvent(i, start + step * n, 5.0) for n, i in enumerate(items)]


def _log() -> dict[str, list[HistoryEvent]]:
    # i0 -> i1 -> i2 is a common path; i5 -> i6 another; i7 is watched by nobody
    return {
        "a": _h("i0", "i1", "i2"),
        "b": _h("i0", "i1", "i2", "i3"),
        "c": _h("i5", "i6", "i4"),
        "d": _h("i5", "i6"),
    }


def test_covisitation_proposes_what_follows_the_recent_items() -> None:
    source = CoVisitationSource.build(ITEMS, _log(), window=1, normalise=False)
    proposal = source.propose(_h("i5", "i0"), k=5)
    assert proposal.ids[0] == "i1"  # the neighbour of the latest item first
    assert "i6" in proposal.ids  # then the older item's neighbour, weighted down
    assert "i7" not in proposal.ids  # no evidence: never proposed
    assert list(proposal.scores) == sorted(proposal.scores, reverse=True)
    excluded = source.propose(_h("i5", "i0"), k=5, exclude={"i1"})
    assert "i1" not in excluded.ids
    with pytest.raises(ValueError, match="window must be >= 1"):
        CoVisitationSource.build(ITEMS, _log(), window=0)


def test_no_source_reads_an_event_at_or_after_the_request_time() -> None:
    """A later event would change every proposal; cut at ``at`` it changes none."""
    history = _h("i0", "i5")  # i0 at t=100, i5 at t=110
    at = 110  # the request comes before i5
    vectors = ItemVectors(ITEMS, np.eye(8, dtype=np.float32))
    sources = [
        CoVisitationSource.build(ITEMS, _log(), window=2),
        FactorSource.build(ITEMS, _log(), factors=4, iterations=5),
        TowerSource(MeanItemsTower(vectors, n_recent=5), FlatIndex(8).build(ITEMS, vectors.matrix)),
    ]
    for source in sources:
        cut = source.propose(history[:1], k=4)
        with_future = source.propose(history, at=at, k=4)
        assert cut.ids == with_future.ids, source.name
        np.testing.assert_allclose(cut.scores, with_future.scores, rtol=1e-6)
        assert source.propose(history, k=4).ids != cut.ids, source.name  # it would matter


def test_recent_popularity_counts_only_its_window_before_the_request() -> None:
    log = {"a": _h("i1", "i1", start=0, step=1), "b": _h("i2", start=50), "c": _h("i3", start=99)}
    source = RecentPopularitySource.build(ITEMS, log, window=60)
    # window [40, 100): i2 (t=50) and i3 (t=99); i1 (t=0, 1) is too old
    assert set(source.propose([], at=100, k=5).ids) == {"i2", "i3"}
    # at=99 the event at 99 is not yet visible
    assert source.propose([], at=99, k=5).ids == ["i2"]
    counts = source.counts_at(2)
    assert counts[1] == 2 and counts.sum() == 2
    assert source.propose([], at=None, k=5).ids[0] in {"i2", "i3"}  # the log's last window


def test_factor_source_folds_in_and_excludes() -> None:
    source = FactorSource.build(ITEMS, _log(), factors=4, iterations=10)
    proposal = source.propose(_h("i0", "i1"), k=8, exclude={"i0", "i1"})
    assert proposal.ids and not {"i0", "i1"} & set(proposal.ids)
    assert source.propose([], k=5).ids == []  # nothing known: no proposal
    # i7 has no events, so no factors: a dot product of 0 outranks every negative score, yet
    # a collaborative source knows nothing of it and never proposes it
    assert not source.factors[ITEMS.index("i7")].any()
    assert "i7" not in source.propose(_h("i0", "i1"), k=8).ids
    with pytest.raises(ValueError, match="3 factor rows for 8 items"):
        FactorSource(ITEMS, np.zeros((3, 4), np.float32), reg=0.1, alpha=1.0)


def test_tower_source_skips_users_it_cannot_embed() -> None:
    vectors = ItemVectors(ITEMS, np.eye(8, dtype=np.float32))
    source = TowerSource(MeanItemsTower(vectors), FlatIndex(8).build(ITEMS, vectors.matrix))
    disliked = [HistoryEvent("i0", 1, 1.0)]  # no likes: the mean-items tower has no vector
    assert source.propose(disliked, k=3).ids == []
    liked = source.propose(_h("i3"), k=3, exclude={"i3"})
    assert "i3" not in liked.ids and len(liked.ids) == 3


def test_merge_keeps_every_sources_score_and_rank() -> None:
    merged = merge(
        {
            "tower": Proposal(["x", "y", "z"], np.array([0.9, 0.8, 0.7], np.float32)),
            "covisit": Proposal(["y", "w"], np.array([5.0, 1.0], np.float32)),
        },
        depth={"tower": 3, "covisit": 50},
    )
    assert merged.ids == ["x", "y", "w", "z"]  # by best rank, ties by source order
    assert merged.sources == ["tower", "covisit"]
    y = merged.ids.index("y")
    assert merged.present[y].tolist() == [True, True]
    assert merged.rank[y].tolist() == [1, 0] and merged.score[y].tolist() == [
        pytest.approx(0.8),
        5.0,
    ]
    w = merged.ids.index("w")
    assert merged.present[w].tolist() == [False, True]
    assert merged.rank[w, 0] == 3 and merged.score[w, 0] == 0.0  # missing: a flag and the depth
