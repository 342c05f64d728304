"""`duorank bench stage-tables`: what a build's ranking-stage tables weigh as the users grow.

A synthetic catalog (20,000 items; 2,000 with ``--quick``) and logs of more and more users (20
events each, items drawn by a power law of popularity so that a few are everywhere and most are
rare, times over 400 days, half of the events rated). At each size the stage's tables are
fitted (:meth:`rerank.ranker.tables.StageTables.fit`) and saved as an index build saves them,
and the benchmark reports, table by table:

- the bytes the build writes (``stage.npz``): the item-side tables a serving process loads
  (the log's per-item day counts, the co-visitation and kNN co-occurrence rows bounded per
  item, ALS factors, norms, genres);
- the bytes the same log took in the previous format (``duorank.stage/1``: every event's item,
  time and rating, the (items, users) matrix and the unbounded co-visitation), computed from
  the same fit;
- the fit's seconds.

What it shows: the previous format grows with the events; the item-side one with the items'
distinct neighbours, never past its bound (every item's row full: 500 co-visitation and 300
co-occurrence pairs of 8 bytes), whatever the number of users.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target
from catalog.model import Item
from catalog.text import HistoryEvent

EVENTS_PER_USER = 20
DAYS = 400
T0 = 1_500_000_000
SEED = 0
ZIPF = 1.1
"""Exponent of the items' popularity (rank r drawn with weight 1 / r ** ZIPF)."""


def _log(n_users: int, n_items: int, seed: int) -> dict[str, list[HistoryEvent]]:
    """Synthetic users of 20 distinct items each, in time order."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** ZIPF
    weights /= weights.sum()
    out: dict[str, list[HistoryEvent]] = {}
    for u in range(n_users):
        items = rng.choice(n_items, EVENTS_PER_USER, replace=False, p=weights)
        times = np.sort(T0 + rng.integers(0, DAYS * 86_400, EVENTS_PER_USER))
        ratings = rng.integers(1, 11, EVENTS_PER_USER) / 2
        out[f"u{u}"] = [
            HistoryEvent(f"i{i}", int(t), float(r) if n % 2 else None)
            for n, (i, t, r) in enumerate(zip(items, times, ratings, strict=True))
        ]
    return out


def _one_size(items: dict[str, Item], n_users: int, seed: int, folder: Path) -> dict[str, Any]:
    import scipy.sparse as sp

    from rerank.ranker.tables import StageTables
    from retrieval.sources import CoVisitationSource

    histories = _log(n_users, len(items), seed)
    start = time.perf_counter()
    tables = StageTables.fit(items, histories)
    fit_s = time.perf_counter() - start
    tables.save(folder)
    with np.load(folder / "stage.npz") as npz:
        saved = {k: int(npz[k].nbytes) for k in npz.files}

    def group(prefix: str) -> int:
        return sum(v for k, v in saved.items() if k.startswith(prefix))

    # the previous format's arrays for the same log: every event, the users matrix, the
    # unbounded co-visitation
    assert tables.log_cols is not None
    events = len(tables.log_cols)
    pairs = {(c, u) for u, h in enumerate(histories.values()) for c in {e.item_id for e in h}}
    users_of_bytes = len(pairs) * (4 + 4) + (len(items) + 1) * 4
    full_covisit: sp.csr_matrix = CoVisitationSource.build(list(items), histories).table
    old = {
        "log": events * (8 + 8 + 8),
        "users_of": users_of_bytes,
        "covisit": full_covisit.nnz * 8 + (len(items) + 1) * 4,
        "als_factors": saved["als_factors"],
        "genres": group("genres_"),
    }
    new = {
        "day_counts": group("day_"),
        "covisit": group("covisit_"),
        "cooccurrence": group("cooccurrence_"),
        "item_norm": saved["item_norm"],
        "als_factors": saved["als_factors"],
        "genres": group("genres_"),
    }
    row = {
        "users": n_users,
        "events": events,
        "fit_s": round(fit_s, 2),
        "item_side_bytes": sum(new.values()),
        "events_form_bytes": sum(old.values()),
        "item_side": new,
        "events_form": old,
        "covisit_kept": round(tables.covisit.nnz / max(full_covisit.nnz, 1), 4),
        "cooccurrence_pairs": int(tables.cooccurrence.nnz),
    }
    for f in folder.iterdir():
        f.unlink()
    return row


def run(quick: bool, ctx: BenchContext) -> BenchReport:
    """Growing numbers of users over one catalog."""
    n_items = 2_000 if quick else 20_000
    sizes = (1_000, 4_000, 16_000) if quick else (10_000, 40_000, 160_000)
    items = {f"i{n}": Item(f"i{n}", f"item {n}", genres=(f"g{n % 20}",)) for n in range(n_items)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="duorank-stage-tables-") as tmp:
        for n, users in enumerate(sizes):
            rows.append(_one_size(items, users, SEED + n, Path(tmp)))
            r = rows[-1]
            print(
                f"{users:>9,} users {r['events']:>11,} events: item-side "
                f"{r['item_side_bytes'] / 1e6:8.1f} MB, events form "
                f"{r['events_form_bytes'] / 1e6:8.1f} MB, fit {r['fit_s']:.1f} s"
            )
    from rerank.ranker.features import NEIGHBOURS
    from rerank.ranker.tables import COVISIT_NEIGHBOURS

    # every row full: each item's neighbours (int32 column, float32 value) and row pointers
    bound = n_items * ((COVISIT_NEIGHBOURS + NEIGHBOURS) * 8 + 2 * 4)
    for r in rows:
        neighbours = r["item_side"]["covisit"] + r["item_side"]["cooccurrence"]
        r["neighbour_bytes_of_bound"] = round(neighbours / bound, 4)
    middle, large = rows[-2], rows[-1]
    growth = {
        "item_side": round(large["item_side_bytes"] / middle["item_side_bytes"], 3),
        "events_form": round(large["events_form_bytes"] / middle["events_form_bytes"], 3),
        "users": round(large["users"] / middle["users"], 3),
    }
    targets = [
        Target(
            "neighbour tables' bytes / their per-item bound, every size",
            max(r["neighbour_bytes_of_bound"] for r in rows),
            1.0,
            "<=",
        ),
        Target(
            f"item-side / events-form bytes at {sizes[-1]:,} users",
            round(large["item_side_bytes"] / large["events_form_bytes"], 3),
            1.0,
            "<=",
        ),
    ]
    return BenchReport(
        name="stage-tables",
        params={
            "quick": quick,
            "items": n_items,
            "sizes": list(sizes),
            "events_per_user": EVENTS_PER_USER,
            "days": DAYS,
            "zipf": ZIPF,
            "seed": SEED,
        },
        results={"sizes": rows, "growth_two_largest": growth, "neighbour_bound_bytes": bound},
        targets=targets,
        table=[
            {
                "users": r["users"],
                "events": r["events"],
                "item-side MB": round(r["item_side_bytes"] / 1e6, 1),
                "events-form MB": round(r["events_form_bytes"] / 1e6, 1),
                "co-visitation kept": r["covisit_kept"],
                "neighbours / bound": r["neighbour_bytes_of_bound"],
                "fit s": r["fit_s"],
            }
            for r in rows
        ],
    )
