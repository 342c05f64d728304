"""The room the ranking stage has: candidate-set recall of each source and of their merge.

On validation (the first stage fitted on train), each candidate source of
:mod:`retrieval.sources` proposes ``depth`` items per user; the report gives each source's
Recall@N of the held-out item, the recall and size of the merged set, and the merge without each
source. A ranker can only put first what some source proposed, so this bounds what it can add.

The request time is the held-out event's second (plus one: the split orders events within a
second by its seeded tie-break, and the history holds the ones before); the recent-popularity
window ends there. The tables (co-visitation, ALS) come from the training fold, as every
baseline's model does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.evaluation.methods import Evaluation
from retrieval.sources import (
    CandidateSource,
    CoVisitationSource,
    FactorSource,
    RecentPopularitySource,
    TowerSource,
)

if TYPE_CHECKING:
    from retrieval.index import VectorIndex
    from retrieval.towers import UserTower

SOURCE_DEPTH = 100
"""Items each source proposes: the serving depth of the first stage."""
RECALL_AT = (20, 50, 100)


def candidate_sources(
    ev: Evaluation, tower: UserTower, index: VectorIndex, depth: int = SOURCE_DEPTH
) -> dict[str, Any]:
    """Each source's and the merge's candidate recall on the validation fold."""
    fold = ev.val
    split = ev.split.validation
    when = dict(zip(split.user_ids.tolist(), split.timestamps.tolist(), strict=True))
    histories = [ev.hist_val.get(u, []) for u in fold.users]
    ats: list[int | None] = [int(when[u]) + 1 for u in fold.users]
    excludes = [{fold.item_ids[c] for c in seen} for seen in fold.seen]
    targets = [fold.item_ids[c] for c in fold.relevant]
    als = ev.methods.get("als", {}).get("params", {})
    built: dict[str, tuple[CandidateSource, float]] = {}
    makers: list[Callable[[], CandidateSource]] = [
        lambda: TowerSource(tower, index),
        lambda: CoVisitationSource.build(fold.item_ids, ev.hist_val),
        lambda: FactorSource.build(
            fold.item_ids,
            ev.hist_val,
            factors=int(als.get("factors", 64)),
            reg=float(als.get("regularization", 0.01)),
            alpha=float(als.get("alpha", 1.0)),
            iterations=int(als.get("iterations", 20)),
            seed=ev.seed,
        ),
        lambda: RecentPopularitySource.build(fold.item_ids, ev.hist_val),
    ]
    for make in makers:
        started = time.perf_counter()
        source = make()
        built[source.name] = (source, time.perf_counter() - started)
    proposed: dict[str, list[list[str]]] = {}
    report: dict[str, Any] = {"fold": "validation", "depth": depth, "sources": {}}
    for name, (source, build_s) in built.items():
        started = time.perf_counter()
        proposals = source.propose_many(histories, ats, depth, excludes)
        proposed[name] = [p.ids for p in proposals]
        report["sources"][name] = {
            **{f"recall@{n}": _recall(proposed[name], targets, n) for n in RECALL_AT},
            "build_seconds": build_s,
            "propose_ms_per_user": 1000 * (time.perf_counter() - started) / max(len(targets), 1),
        }
    report["merged"] = {}
    for n in RECALL_AT:
        union = _union(proposed, n)
        report["merged"][f"recall@{n}"] = _recall(union, targets, None)
        report["merged"][f"size@{n}"] = float(np.mean([len(u) for u in union]))
    report["without"] = {
        name: _recall(
            _union({k: v for k, v in proposed.items() if k != name}, depth), targets, None
        )
        for name in proposed
    }
    ev.progress(
        "candidate sources (validation): "
        + ", ".join(f"{k} {v[f'recall@{depth}']:.3f}" for k, v in report["sources"].items())
        + f"; merged {report['merged'][f'recall@{depth}']:.3f} "
        f"({report['merged'][f'size@{depth}']:.0f} items)"
    )
    return report


def _union(proposed: dict[str, list[list[str]]], n: int) -> list[list[str]]:
    """Per user, the distinct items of every source's first ``n``."""
    users = len(next(iter(proposed.values()))) if proposed else 0
    return [
        list(dict.fromkeys(i for ids in proposed.values() for i in ids[u][:n]))
        for u in range(users)
    ]


def _recall(lists: list[list[str]], targets: list[str], n: int | None) -> float:
    """The share of users whose target is in their list (its first ``n``)."""
    if not targets:
        return float("nan")
    return float(np.mean([t in ids[:n] for ids, t in zip(lists, targets, strict=True)]))
