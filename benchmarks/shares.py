"""What the two copy benches share (`bench cold-dropout`, `bench short-histories`): each
tries shares of extra training copies on three seeds of the new-arrivals models, reads each
share on validation (warm, and through a view that copies aim at) and after the cut-off, and
chooses the share on validation alone.

A seed's figures per share (its key ``str(share)``): ``validation`` (per-list NDCG@10 on the
warm validation lists), the view's mean NDCG@10 under the view's name, ``test`` (the
new-arrivals figures, :func:`benchmarks.evaluation.arrivals.figures`) and ``rounds``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport

Seed = dict[str, dict[str, Any]]
"""One seed's figures per share."""


def over_seeds(
    ctx: BenchContext, seeds: Sequence[int], one_seed: Callable[[Any, Any, int], Seed]
) -> dict[int, Seed]:
    """``one_seed(catalog, encoder, seed)`` for each seed, over the context's data, with
    embeddings cached in its Redis (the embedded one when none is set)."""
    from catalog.movielens import load_movielens
    from retrieval.cache import EmbeddingCache
    from retrieval.encoder import Encoder
    from retrieval.redis_client import open_redis

    catalog = load_movielens(ctx.data)
    client, server = open_redis(ctx.redis_url, ctx.home / "redis")
    try:
        encoder = Encoder(device="cpu", cache=EmbeddingCache(client))
        return {seed: one_seed(catalog, encoder, seed) for seed in seeds}
    finally:
        client.close()
        if server is not None:
            server.close()


def fitted(
    catalog: Any, encoder: Any, seed: int, quick: bool, stage_args: Any, log: logging.Logger
) -> tuple[Any, Any]:
    """The new-arrivals protocol's events and its models for one seed (the text as of the
    seed's held-out start; :func:`benchmarks.evaluation.arrivals.fit_before_cutoff`)."""
    from benchmarks.evaluation.arrivals import Arrivals, fit_before_cutoff
    from catalog.splits import heldout_start, leave_one_out
    from retrieval.encoder import encode_catalog
    from retrieval.sequential import SequentialConfig

    dated = catalog.as_of(heldout_start(leave_one_out(catalog.interactions, seed=seed)))
    arrivals = Arrivals.of(dated, max_events=200 if quick else None, seed=seed)
    text = encode_catalog(encoder, arrivals.catalog.items)
    tower = SequentialConfig(seed=seed)
    models = fit_before_cutoff(
        arrivals,
        dated,
        text,
        tower.reduced() if quick else tower,
        stage_args,
        seed,
        lambda message: log.info("seed %d: %s", seed, message),
    )
    return arrivals, models


def after_cutoff(arrivals: Any, stage: Any, ranker: Any, seed: int) -> dict[str, Any]:
    """The new-arrivals figures of ``ranker`` over ``stage``'s candidates."""
    from benchmarks.evaluation.arrivals import StageScorer, figures, rank_events

    scorer = StageScorer(arrivals, stage, ranker)
    return figures(
        arrivals,
        rank_events(arrivals, arrivals.events, scorer),
        rank_events(arrivals, arrivals.cold, scorer),
        seed,
    )


def summary(
    seeds: dict[int, Seed], shares: Sequence[float], name: str, view: str
) -> list[dict[str, Any]]:
    """One row per share (``name``: its value): means over seeds, the warm difference from
    share 0 paired per list within each seed (its mean and mean standard error), the view."""
    rows = []
    for share in shares:
        key = str(share)
        diffs = _diffs(seeds, key, str(shares[0]), "validation")

        def mean(pick: Callable[[dict[str, Any]], float], key: str = key) -> float:
            return float(np.mean([pick(s[key]) for s in seeds.values()]))

        guard = {}
        if all("cold_view_lists" in s[key] for s in seeds.values()):  # the new items' view
            cold = _diffs(seeds, key, str(shares[0]), "cold_view_lists")
            guard = {
                "cold_view_minus_no_copies": float(np.mean([d.mean() for d in cold])),
                "cold_view_minus_no_copies_se": _mean_se(cold),
            }
        rows.append(
            {
                name: share,
                "validation_ndcg@10": mean(lambda r: r["validation"].mean()),
                "minus_no_copies": float(np.mean([d.mean() for d in diffs])),
                "minus_no_copies_se": _mean_se(diffs),
                f"{view}_ndcg@10": mean(lambda r: r[view]),
                "shelf_ndcg@10": mean(lambda r: r["test"]["shelf"]["ndcg@10"]),
                "new_items_ndcg@10": mean(lambda r: r["test"]["new_items"]["ndcg@10"]),
                "new_items_recall@50": mean(lambda r: r["test"]["new_items"]["recall@50"]),
                "cold_users_ndcg@10": mean(lambda r: r["test"]["cold_users"]["ndcg@10"]),
                "all_events_ndcg@10": mean(lambda r: r["test"]["all_events_ndcg@10"]),
                **guard,
            }
        )
    return rows


def _diffs(seeds: dict[int, Seed], key: str, reference: str, per_list: str) -> list[Any]:
    """Per seed, the per-list difference of share ``key`` from the reference share."""
    return [s[key][per_list] - s[reference][per_list] for s in seeds.values()]


def _mean_se(diffs: list[Any]) -> float:
    """The seeds' mean standard error of a paired per-list difference."""
    return float(np.mean([d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0 for d in diffs]))


def choose(rows: list[dict[str, Any]], name: str, view: str) -> float:
    """The share with the best view among those whose warm NDCG@10 is within one standard
    error of share 0's, and whose cold view is too where the rows hold it: copies that teach
    one slice must not cost the new arrivals (validation only; the test figures never
    choose)."""

    def holds(row: dict[str, Any], prefix: str = "") -> bool:
        if f"{prefix}minus_no_copies" not in row:
            return True
        return bool(row[f"{prefix}minus_no_copies"] >= -row[f"{prefix}minus_no_copies_se"])

    allowed = [r for r in rows if holds(r) and holds(r, "cold_view_")]
    return float(max(allowed, key=lambda r: r[f"{view}_ndcg@10"])[name])


def per_seed_record(seeds: dict[int, Seed], view: str) -> dict[str, Any]:
    """The JSON record of every seed's figures per share (means, not per-list values)."""
    return {
        str(seed): {
            share: {
                "validation_ndcg@10": float(r["validation"].mean()),
                f"{view}_ndcg@10": r[view],
                "rounds": r["rounds"],
                "test": r["test"],
            }
            | (
                {"cold_view_ndcg@10": float(r["cold_view_lists"].mean())}
                if "cold_view_lists" in r
                else {}
            )
            for share, r in figures.items()
            if "validation" in r
        }
        for seed, figures in seeds.items()
    }


def report(
    bench: str,
    seeds: dict[int, Seed],
    tried: Sequence[float],
    name: str,
    view: str,
    default: float,
    ctx: BenchContext,
    quick: bool,
    **extra: Any,
) -> BenchReport:
    """The bench's record: the table, the share chosen on validation, the default beside it,
    every seed's figures and ``extra`` results."""
    rows = summary(seeds, tried, name, view)
    results = {
        "rows": rows,
        "chosen": choose(rows, name, view),
        "default": default,
        **extra,
        "per_seed": per_seed_record(seeds, view),
    }
    params = {"shares": list(tried), "seeds": list(seeds), "data": str(ctx.data), "quick": quick}
    return BenchReport(bench, params, results, table=rows)
