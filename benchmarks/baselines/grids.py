"""Each baseline's validation grid: what is tried, in which stages, quick and full.

One definition for ``duorank eval`` and ``duorank bench baselines``. A stage grids its settings
with the others at the best so far (:func:`benchmarks.evaluation.protocol.tune_staged`); a
single stage is the plain product grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from benchmarks.baselines.base import Scorer
from benchmarks.baselines.ease import EASEScorer
from benchmarks.baselines.implicit_mf import ImplicitScorer
from benchmarks.baselines.itemknn import ItemKNNScorer
from benchmarks.baselines.sasrec import SASRecScorer

BASELINES = ("popularity", "als", "bpr", "itemknn", "ease", "sasrec")
"""Every baseline in report order; "best baseline of the run" is chosen among these."""


SASREC_START = {
    "hidden": 64,
    "blocks": 2,
    "dropout": 0.2,
    "maxlen": 50,
    "epochs": 200,
    "patience": 10,
    "batch_size": 32,
    "lr": 2e-3,
}
"""SASRec's starting point: Adam at 2e-3 on batches of 32 users reaches its best validation
NDCG@10 in about 25 epochs on ml-latest-small; ``patience`` epochs without a gain stop it."""


@dataclass(frozen=True)
class Grid:
    """How one baseline is tuned: a factory, its starting settings and the stages."""

    name: str
    make: Callable[..., Scorer]
    start: Mapping[str, Any]
    stages: Sequence[Mapping[str, Sequence[Any]]]
    seeded: bool = False
    """Refit with every evaluation seed, as the trained tower is (training is stochastic)."""

    @property
    def tuned(self) -> list[str]:
        """The settings its stages vary (and ``epochs`` where validation chooses them)."""
        keys = [k for stage in self.stages for k in stage]
        return list(dict.fromkeys([*keys, *(["epochs"] if self.make is SASRecScorer else [])]))


def baseline_grids(quick: bool, seed: int) -> dict[str, Grid]:
    """The tuned baselines' grids (popularity has nothing to tune)."""
    als = Grid(
        "als",
        partial(ImplicitScorer, "als"),
        {"seed": seed},
        [
            {
                "factors": (32, 64) if quick else (32, 64, 128),
                "regularization": (0.01, 0.1),
                "alpha": (1.0,) if quick else (1.0, 10.0),
            }
        ],
    )
    bpr = Grid(
        "bpr",
        partial(ImplicitScorer, "bpr"),
        {"seed": seed, "iterations": 100},
        [{"factors": (32,) if quick else (32, 64, 128), "learning_rate": (0.01, 0.05)}],
    )
    itemknn = Grid(
        "itemknn",
        ItemKNNScorer,
        {"neighbours": 100, "shrink": 10.0, "alpha": 0.5, "weighting": "binary", "half_life": 0.0},
        [
            {"half_life": (0.0, 5.0) if quick else (0.0, 2.0, 5.0, 10.0, 20.0)},
            {
                "weighting": ("binary", "bm25") if quick else ("binary", "idf", "bm25"),
                "alpha": (0.5,) if quick else (0.3, 0.5, 0.7),
            },
            {
                "neighbours": (50, 100) if quick else (20, 50, 100, 200, 500),
                "shrink": (10.0,) if quick else (0.0, 10.0, 100.0),
            },
        ],
    )
    ease = Grid(
        "ease",
        EASEScorer,
        {"lam": 500.0},
        [{"lam": (500.0,) if quick else (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)}],
    )
    sasrec = Grid(
        "sasrec",
        SASRecScorer,
        (
            {**SASREC_START, "hidden": 32, "blocks": 1, "epochs": 4, "seed": seed}
            if quick
            else {**SASREC_START, "seed": seed}
        ),
        (
            []
            if quick
            else [
                {"blocks": (1, 2), "hidden": (64, 128)},
                {"dropout": (0.1, 0.2, 0.5)},
                {"maxlen": (50, 100, 200)},
            ]
        ),
        seeded=True,
    )
    return {g.name: g for g in (als, bpr, itemknn, ease, sasrec)}
