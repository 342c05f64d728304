"""The ranker's folds: how many trees, grown on user folds in step, and their average.

A single held-out fifth of a few hundred lists picks the number of trees noisily (seeds of
one protocol stopped anywhere from a few dozen trees to over a hundred), and one refit keeps
that noise. Here every list is held out once: the boosters of ``k`` user folds grow in step, the
number of trees is where their mean held-out NDCG@10 peaks, and the served model is the mean of
the ``k`` fold models, written as one LightGBM model (:func:`averaged`) so that scoring,
TreeSHAP explanations and the saved file are those of a single booster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_TREE = re.compile(r"(?=^Tree=\d+\n)", flags=re.MULTILINE)
_VALUES = ("leaf_value=", "internal_value=")


def user_folds(users: Sequence[str], k: int, seed: int) -> npt.NDArray[np.int64]:
    """Per list, its fold in ``0 .. k - 1``: users shuffled by ``seed`` and dealt in turn, so
    that every user's lists share one fold and the folds differ by at most one user.

    Raises:
        ValueError: ``k`` is below 2 or above the number of distinct users.
    """
    distinct = sorted(set(users))
    if not 2 <= k <= len(distinct):
        raise ValueError(f"cannot deal {len(distinct)} users into {k} folds (2 <= folds <= users)")
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[u]: n % k for n, u in enumerate(order.tolist())}
    return np.array([fold_of[u] for u in users], dtype=np.int64)


@dataclass(frozen=True)
class Grown:
    """Boosters grown in step: the chosen number of trees and the mean held-out curve."""

    boosters: list[Any]
    rounds: int
    curve: list[float]

    @property
    def best(self) -> float:
        """The mean held-out metric at :attr:`rounds`."""
        return self.curve[self.rounds - 1]


def grow_in_step(
    parts: Sequence[tuple[Any, Any]],
    params: dict[str, Any],
    max_rounds: int,
    patience: int,
    metric: str = "ndcg@10",
    on_round: Callable[[], None] | None = None,
) -> Grown:
    """One booster per ``(fit, held_out)`` pair of LightGBM datasets, grown a tree at a time
    together until their mean held-out ``metric`` (higher is better) has not improved for
    ``patience`` trees: LightGBM's early stopping, on the folds' mean."""
    import lightgbm as lgb

    boosters = []
    for fit, held in parts:
        booster = lgb.Booster(params, fit)
        booster.add_valid(held, "held_out")
        boosters.append(booster)
    curve: list[float] = []
    best, best_round = -np.inf, 0
    for n in range(1, max_rounds + 1):
        values = []
        for booster in boosters:
            booster.update()
            values.append(next(r[2] for r in booster.eval_valid() if r[1] == metric))
        curve.append(float(np.mean(values)))
        if on_round is not None:
            on_round()
        if curve[-1] > best:
            best, best_round = curve[-1], n
        elif n - best_round >= patience:
            break
    return Grown(boosters, max(1, best_round), curve)


def averaged(boosters: Sequence[Any], rounds: int) -> Any:
    """One LightGBM booster whose output is the mean of ``boosters``' first ``rounds`` trees
    each: their trees one after another, every leaf and internal value divided by their
    number (a tree ensemble's output and its TreeSHAP values are sums over trees, so both
    average exactly).

    Raises:
        ValueError: no booster, or boosters of different features.
    """
    import lightgbm as lgb

    if not boosters:
        raise ValueError("nothing to average: no booster")
    names = {tuple(b.feature_name()) for b in boosters}
    if len(names) > 1:
        raise ValueError("cannot average boosters of different features")
    share = 1.0 / len(boosters)
    texts = [b.model_to_string(num_iteration=rounds) for b in boosters]
    first = texts[0]
    head = first[: first.index("tree_sizes=")]
    tail = first[first.index("end of trees") :]
    trees: list[str] = []
    for text in texts:
        body = text[text.index("\nTree=") + 1 : text.index("end of trees")]
        trees += [t for t in _TREE.split(body) if t]
    blocks = [_renumbered(_scaled(t, share), n) for n, t in enumerate(trees)]
    sizes = " ".join(str(len(b.encode())) for b in blocks)
    return lgb.Booster(model_str=f"{head}tree_sizes={sizes}\n\n{''.join(blocks)}{tail}")


def _scaled(tree: str, share: float) -> str:
    """A tree's text with its leaf and internal values times ``share``."""
    lines = []
    for line in tree.split("\n"):
        for key in _VALUES:
            if line.startswith(key):
                values = (float(v) * share for v in line[len(key) :].split())
                line = key + " ".join(repr(v) for v in values)
        lines.append(line)
    return "\n".join(lines)


def _renumbered(tree: str, n: int) -> str:
    """A tree's text as tree ``n`` of the model."""
    return re.sub(r"^Tree=\d+\n", f"Tree={n}\n", tree, count=1)
