"""A Recommender pinned to a published version (what `recommend-all`'s actors open): it
serves that version whatever CURRENT names, and never reloads."""

from __future__ import annotations

from indexer import IndexRoot
from serving.recommender import Recommender
from tests.live import Stack


def test_a_pinned_version_serves_whatever_current_names(stack: Stack) -> None:
    root = IndexRoot(stack.root)
    before = root.current()
    older, newer = stack.versions[0], stack.versions[1]
    try:
        root.set_current(newer)
        pinned = Recommender(stack.root, stack.catalog, version=older)
        follower = Recommender(stack.root, stack.catalog)
        assert pinned.index_version == older and follower.index_version == newer
        assert pinned.recommend("u1", k=3, candidates=10).index_version == older
        root.set_current(stack.versions[2])  # a publish while a batch job runs
        assert follower.reload() and follower.index_version == stack.versions[2]
        assert not pinned.reload() and pinned.index_version == older
        assert pinned.recommend("u1", k=3, candidates=10).index_version == older
    finally:
        if before is not None:
            root.set_current(before)
