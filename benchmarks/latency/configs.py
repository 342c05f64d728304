"""What ``bench latency`` times: one :class:`Config` per row of the levers table (what serves,
how its process is set up) and the saved models each row needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPTHS = (10, 20, 50, 100, 200)
REFERENCE_DEPTH = 100
CASCADE_DEPTHS = (10, 20, 50)
"""Lever 2: how many of the ranker's top candidates the cross-encoder reorders."""
BEFORE = "cross-encoder, tower top 100, torch fp32 (first default)"
DEFAULT = "ranking stage: features, trees, P(like) head; threads sleep when idle (default)"
CASCADE = "ranking stage, then the cross-encoder (auto backend) over its top N"
TEXT_SKIPPED = "cross-encoder whose head gives the text no weight: no transformer pass"
SPLIT = "reranker-split"
"""Lever 1's model under the home's models/ (``train reranker --item-layers 3``)."""
DISTILLED = "reranker-distilled"
"""Lever 3's student under the home's models/ (``train reranker --layers 2 --teacher``)."""


@dataclass(frozen=True)
class Config:
    """One row of the levers table: what serves, and how the child process is set up."""

    name: str
    reranker: str | None = None  # a backend for the cross-encoder, or None: the ranking stage
    spin: bool = False  # ONNX Runtime's threads busy-wait between runs
    threaded_trees: bool = False  # LightGBM's OpenMP pool for a request's rows
    wait_policy: str | None = "PASSIVE"
    """OMP_WAIT_POLICY of the process (OpenMP reads it when it loads); None leaves it unset:
    OpenMP's default, idle threads spin a while before they sleep."""
    depths: tuple[int, ...] = (REFERENCE_DEPTH,)
    cascade: bool = False
    """The ranking stage with the cross-encoder over its top N (lever 2), timed per N in
    :data:`CASCADE_DEPTHS` instead of per depth."""
    folder: str = "reranker"  # the cross-encoder's folder under the home's models/
    text_pass: bool = False
    """Run the cross-encoder's transformer even where its head gives the text no weight
    (``Reranker(skip_unweighted_text=False)``): the rows before that lever."""
    item_cache: bool = False
    """Keep an item-layers model's item states in Redis, every catalog item's computed before
    the timed calls (the nightly step)."""


UNOPTIMISED = Config(
    "ranking stage: features, trees (LightGBM's thread pool), P(like) head",
    threaded_trees=True,
    wait_policy=None,
)
"""The ranking stage before the latency levers: the quality reference of the fast path."""


def layers_of(folder: Path) -> int:
    """Transformer layers of a saved reranker's backbone."""
    config = json.loads((folder / "backbone" / "config.json").read_text())
    return int(config["num_hidden_layers"])


def card_quality(folder: Path) -> dict[str, Any]:
    """A reranker's own validation figures from its card: before and after the fusion."""
    card = json.loads((folder / "duorank-card.json").read_text())
    calibration = card.get("calibration", {})
    before = calibration.get("before") or (card.get("epochs") or [{}])[-1]
    after = calibration.get("after", before)
    keys = ("auc", "logloss", "ndcg@10_rerank", "ndcg@10_retrieval")
    return {
        "layers": layers_of(folder),
        "train_seconds": card.get("train_seconds"),
        "text_scale": calibration.get("text_scale"),
        **{f"{k}_before_fusion": before.get(k) for k in keys},
        **{f"{k}_after_fusion": after.get(k) for k in keys},
    }
