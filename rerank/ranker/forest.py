"""A LightGBM model's trees compiled to native code, for one request's rows.

LightGBM's ``predict`` walks each row through every tree behind a generic C API: for one
request's ~170 candidates and the served model's ~435 trees (the mean of five fold models)
that is about a third of a served call's CPU. The same walk written as one numba loop over flat
node arrays does the same comparisons in the same order and sums the leaves in the same order
in double precision, so its scores are LightGBM's to the bit (checked on load against
LightGBM itself; any difference and the model keeps LightGBM's ``predict``).

Only what the ranker serves is compiled: numerical splits and a raw-score objective. A model
with a categorical split, linear trees or an output transform, or a machine without numba,
keeps LightGBM's ``predict`` (:func:`compile_forest` returns None and says why in the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

RAW_OBJECTIVES = ("lambdarank", "rank_xendcg", "regression", "regression_l2", "l2", "mse")
"""Objectives whose ``predict`` is the trees' raw sum (no sigmoid or softmax after it)."""


@dataclass(frozen=True)
class Forest:
    """Every tree's nodes in flat arrays. A child ``c >= 0`` is node ``c``; ``c < 0`` is leaf
    ``-c - 1``; ``roots[t]`` is tree ``t``'s first node (a leaf for a one-leaf tree)."""

    roots: npt.NDArray[np.int32]
    feature: npt.NDArray[np.int32]
    threshold: npt.NDArray[np.float64]
    decision: npt.NDArray[np.int8]
    left: npt.NDArray[np.int32]
    right: npt.NDArray[np.int32]
    leaf: npt.NDArray[np.float64]
    features: int

    def predict(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """The trees' sum for each row of ``x`` (LightGBM's raw score).

        Raises:
            ValueError: ``x`` is not a matrix of :attr:`features` columns.
        """
        rows = np.ascontiguousarray(x, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.features:
            raise ValueError(f"rows of {self.features} features expected, got shape {rows.shape}")
        out = np.zeros(len(rows), dtype=np.float64)
        _kernel()(
            rows,
            self.roots,
            self.feature,
            self.threshold,
            self.decision,
            self.left,
            self.right,
            self.leaf,
            out,
        )
        return out


def _ints(line: str) -> list[int]:
    return [int(v) for v in line.split()]


def parse_forest(text: str) -> Forest:
    """The flat arrays of a LightGBM model's text (``Booster.model_to_string()``).

    Raises:
        ValueError: the model has something :class:`Forest` does not walk (a categorical split,
            linear trees, an objective with an output transform).
    """
    head = text[: text.find("\nTree=")] if "\nTree=" in text else text
    fields = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    objective = fields.get("objective", "").split()[0] if fields.get("objective") else ""
    if objective not in RAW_OBJECTIVES:
        raise ValueError(f"objective {objective or '(none)'!r} transforms its output")
    features = int(fields["max_feature_idx"]) + 1
    roots: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    decision: list[int] = []
    left: list[int] = []
    right: list[int] = []
    leaf: list[float] = []
    end = text.find("end of trees")
    for block in text[:end].split("\nTree=")[1:]:
        tree = dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
        if tree.get("is_linear", "0") != "0":
            raise ValueError("linear trees are not compiled")
        if int(tree.get("num_cat", "0")):
            raise ValueError("categorical splits are not compiled")
        nodes, leaves = len(feature), len(leaf)
        values = [float(v) for v in tree["leaf_value"].split()]
        if int(tree["num_leaves"]) == 1:
            roots.append(-leaves - 1)
            leaf += values
            continue

        def child(c: int, nodes: int = nodes, leaves: int = leaves) -> int:
            return nodes + c if c >= 0 else -(leaves + (-c - 1)) - 1

        roots.append(nodes)
        feature += _ints(tree["split_feature"])
        threshold += [float(v) for v in tree["threshold"].split()]
        decision += _ints(tree["decision_type"])
        left += [child(c) for c in _ints(tree["left_child"])]
        right += [child(c) for c in _ints(tree["right_child"])]
        leaf += values
    if any(d & 1 for d in decision):
        raise ValueError("categorical splits are not compiled")
    return Forest(
        np.asarray(roots, dtype=np.int32),
        np.asarray(feature, dtype=np.int32),
        np.asarray(threshold, dtype=np.float64),
        np.asarray(decision, dtype=np.int8),
        np.asarray(left, dtype=np.int32),
        np.asarray(right, dtype=np.int32),
        np.asarray(leaf, dtype=np.float64),
        features,
    )


def compile_forest(booster: Any, probe_rows: int = 256, seed: int = 0) -> Forest | None:
    """``booster``'s trees as a :class:`Forest` whose scores equal ``booster.predict`` on a
    probe of rows that reach every side of every split (NaN and zero included); None, with
    the reason logged, where it cannot be (no numba, a model it does not walk, a difference)."""
    try:
        _kernel()
    except ImportError:
        log.info("numba is not installed: the ranker keeps LightGBM's predict")
        return None
    try:
        forest = parse_forest(booster.model_to_string())
    except (ValueError, KeyError) as e:
        log.info("the ranker keeps LightGBM's predict: %s", e)
        return None
    probe = _probe(forest, probe_rows, seed)
    expected = np.asarray(booster.predict(probe, num_threads=1), dtype=np.float64)
    if not np.array_equal(forest.predict(probe), expected):
        log.warning("the compiled trees differ from LightGBM's predict: keeping LightGBM's")
        return None
    return forest


def _probe(forest: Forest, rows: int, seed: int) -> npt.NDArray[np.float32]:
    """Rows whose values are the trees' thresholds (each side of them), zeros and NaNs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, forest.features)).astype(np.float32)
    for f in range(forest.features):
        cuts = forest.threshold[forest.feature == f].astype(np.float32)
        if len(cuts):
            near = np.concatenate([cuts, np.nextafter(cuts, np.float32(np.inf)), [0.0, np.nan]])
            x[:, f] = rng.choice(near.astype(np.float32), size=rows)
    return x


def _kernel() -> Any:
    """The numba-compiled walk (:mod:`rerank.ranker.forest_kernel`; compiled once per process
    and cached on disk by numba).

    Raises:
        ImportError: numba is not installed.
    """
    from rerank.ranker.forest_kernel import walk

    return walk
