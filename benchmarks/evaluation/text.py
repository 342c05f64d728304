"""Does the text earn its place in the ranking stage? The validation side by side.

The cross-encoder (``duorank train reranker``, trained on the training split only) reads the
user's history and the candidate as text. Its text logit (the head over the pooled text, with
the scalar features zeroed) is measured on the validation lists' tower top
:data:`TEXT_DEPTH` (the pairs the cross-encoder served before the ranking stage), against the
same candidates ordered by:

- the first stage (the tower's score);
- the features ranker (the served LightGBM model, no text);
- the text alone: issue (c);
- the ranker plus the text: issue (a), the point-wise score ``a * ranker + w * text`` with
  ``(a, w)`` fitted by list-wise softmax cross-entropy, and the first stage plus the text.

The fitted weights come from the other half of the users (two-fold cross-fitting), so no list
is scored by a weight fitted on it. The text earns its place only if ``ranker + text`` beats
the ranker by more than one standard error of the paired per-list difference (the rule that
chose the ranker over the first stage); otherwise the served path runs no text forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from catalog.model import Catalog, User
from catalog.text import HistoryEvent, ItemTextTemplate, UserTextTemplate
from rerank.cross_encoder.backends import probability_np
from rerank.ranker.candidates import Lists
from rerank.ranker.cascade import DEPTHS, cross_fitted_cascade
from rerank.ranker.model import GBDTRanker, list_loss
from rerank.ranker.train import list_ndcg10

if TYPE_CHECKING:
    from rerank.cross_encoder import Reranker

TEXT_DEPTH = 50
"""The tower's top N per list that the cross-encoder scores (its serving depth before)."""

Floats = npt.NDArray[np.float64]


def tower_top(lists: Lists, depth: int = TEXT_DEPTH) -> Lists:
    """Each list's candidates among the tower's top ``depth`` (ranks count from 0; the
    others dropped)."""
    rank = lists.column("tower_rank")
    present = lists.column("tower_present") > 0
    return lists.without_rows(~present | (rank >= depth))


def text_logits(
    reranker: Reranker,
    lists: Lists,
    item_ids: Sequence[str],
    catalog: Catalog,
    histories: Mapping[str, Sequence[HistoryEvent]],
    progress: Callable[[str], None] | None = None,
) -> Floats:
    """The cross-encoder's text logit per row (features zeroed: the text's own evidence);
    a rating head's P(like) is turned back into a logit."""
    template = UserTextTemplate.from_dict(reranker.config.user_template)
    items = ItemTextTemplate()
    off = lists.offsets
    out = np.zeros(len(lists.cols), dtype=np.float64)
    for n, user in enumerate(lists.users):
        rows = slice(off[n], off[n + 1])
        if off[n] == off[n + 1]:
            continue
        text = template.render(
            catalog.users.get(user, User(user)), histories.get(user, []), catalog.items
        )
        ids = [item_ids[c] for c in lists.cols[rows]]
        logits = reranker.logits(text, [items.render(catalog.items[i]) for i in ids])
        if reranker.config.n_outputs == 1:
            out[rows] = logits[:, 0]
        else:
            p = np.clip(probability_np(logits, reranker.config), 1e-6, 1 - 1e-6)
            out[rows] = np.log(p / (1 - p))
        if progress is not None and (n + 1) % 100 == 0:
            progress(f"text logits: {n + 1}/{len(lists.users)} lists")
    return out


def fit_blend(base: Floats, text: Floats, lists: Lists) -> tuple[float, float]:
    """``(a, w)`` minimising the list softmax cross-entropy of ``a * base + w * text``."""
    from scipy.optimize import minimize

    def loss(p: npt.NDArray[np.float64]) -> float:
        return list_loss(p[0] * base + p[1] * text, lists)

    start = np.array([1.0, 0.0])
    result = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-5})
    return float(result.x[0]), float(result.x[1])


def cross_fitted(
    base: Floats, text: Floats, lists: Lists, seed: int
) -> tuple[Floats, list[dict[str, float]]]:
    """Scores ``a * base + w * text`` for every row, each half of the lists scored with the
    weights fitted on the other half; returns them and the two fits."""
    order = np.random.default_rng(seed).permutation(len(lists.sizes))
    halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
    off = lists.offsets
    out = np.zeros(len(base), dtype=np.float64)
    fits = []
    for fit_on, score_on in ((halves[0], halves[1]), (halves[1], halves[0])):
        rows = _rows(off, fit_on)
        a, w = fit_blend(base[rows], text[rows], lists.select(fit_on))
        fits.append({"a": a, "w": w})
        rows = _rows(off, score_on)
        out[rows] = a * base[rows] + w * text[rows]
    return out, fits


def _rows(off: npt.NDArray[np.int64], lists: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    if not len(lists):
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(off[n], off[n + 1]) for n in lists])


def text_side_by_side(
    reranker: Reranker,
    ranker: GBDTRanker,
    val_lists: Lists,
    item_ids: Sequence[str],
    catalog: Catalog,
    histories: Mapping[str, Sequence[HistoryEvent]],
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The validation table (see the module docstring) and whether the text earns weight."""
    lists = tower_top(val_lists)
    started = time.perf_counter()
    text = text_logits(reranker, lists, item_ids, catalog, histories, progress)
    seconds = time.perf_counter() - started
    tower = lists.column("retrieval_score").astype(np.float64)
    features = np.asarray(ranker.score(lists.x), dtype=np.float64)
    ranker_plus, ranker_fits = cross_fitted(features, text, lists, seed)
    tower_plus, tower_fits = cross_fitted(tower, text, lists, seed)
    variants = {
        "first stage": tower,
        "features ranker (served)": features,
        "text only (cross-encoder)": text,
        "first stage + text": tower_plus,
        "features ranker + text": ranker_plus,
    }
    reference = list_ndcg10(features, lists)
    table = {}
    for name, scores in variants.items():
        per_list = list_ndcg10(scores, lists)
        diff = per_list - reference
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        table[name] = {
            "ndcg@10": float(per_list.mean()),
            "minus_ranker": float(diff.mean()),
            "minus_ranker_se": se,
        }
    gain = table["features ranker + text"]
    earns = gain["minus_ranker"] > gain["minus_ranker_se"]
    pairs = len(lists.cols)
    return {
        "depth": TEXT_DEPTH,
        "lists": len(lists.sizes),
        "pairs": pairs,
        "backend": reranker.backend,
        "seconds": seconds,
        "ms_per_pair": 1000.0 * seconds / pairs if pairs else None,
        "variants": table,
        "fits": {"features ranker + text": ranker_fits, "first stage + text": tower_fits},
        "text_earns_weight": bool(earns),
        "served": "features ranker + text" if earns else "features ranker (no text pass)",
    }


SLICES: dict[str, tuple[str, float]] = {
    "rare targets (at most 10 events before the request)": ("pop_all", float(np.log1p(10))),
    "short histories (at most 10 events)": ("history_length", float(np.log1p(10))),
}
"""Where text should matter, as (column, ceiling) over each list's target row (both columns
are ``log1p`` counts)."""


def _target_values(lists: Lists, column: str) -> Floats:
    """Per list, ``column``'s value on its target row (inf: no target among the candidates)."""
    values = lists.column(column)
    off = lists.offsets
    out = np.full(len(lists.sizes), np.inf)
    for n in range(len(lists.sizes)):
        hit = np.flatnonzero(lists.labels[off[n] : off[n + 1]])
        if len(hit):
            out[n] = float(values[off[n] + hit[0]])
    return out


def _paired(per_list: Floats, reference: Floats, name: str) -> dict[str, float]:
    """The mean of ``per_list`` minus ``reference`` and the standard error of that paired
    difference, keyed ``minus_{name}``."""
    diff = per_list - reference
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    mean = float(diff.mean()) if len(diff) else float("nan")
    return {f"minus_{name}": mean, f"minus_{name}_se": se}


def _slice(per_list: Floats, first: Floats, control: Floats) -> dict[str, float]:
    """One slice's figures: the cascade's NDCG@10 against the first pass and the control."""
    empty = not len(per_list)
    return {
        "lists": len(per_list),
        "ndcg@10": float("nan") if empty else float(per_list.mean()),
        "first_pass_ndcg@10": float("nan") if empty else float(first.mean()),
        "control_ndcg@10": float("nan") if empty else float(control.mean()),
        **_paired(per_list, first, "first_pass"),
        **_paired(per_list, control, "control"),
    }


def _beats(figures: Mapping[str, float], name: str) -> bool:
    return figures[f"minus_{name}"] > figures[f"minus_{name}_se"]


def cascade_side_by_side(
    lists: Lists,
    first: Floats,
    text: Floats,
    seed: int,
    ms_per_call: Mapping[int, float] | None = None,
    depths: Sequence[int] = DEPTHS,
) -> dict[str, Any]:
    """The text cascade (:mod:`rerank.ranker.cascade`) on validation lists, per top N: its
    cross-fitted NDCG@10 against the features ranker's order (the first pass) and against the
    control (the same second pass, fitted the same way, with the text logit held at zero: what
    refitting trees on these lists gives without text), overall and per :data:`SLICES`; the
    cost per call; and the N that serves: the one with the largest gain among those beating
    both the first pass and the control by more than one standard error, else none (no text
    pass).

    Args:
        lists: the validation lists (their targets labelled), every feature the ranker reads.
        first: the features ranker's score per row.
        text: the cross-encoder's logit per row (only each list's top ``max(depths)`` by
            ``first`` is read).
        ms_per_call: the text pass's measured cost of one call per N (None: not measured).
    """
    reference = list_ndcg10(first, lists)
    targets = {name: _target_values(lists, col) for name, (col, _) in SLICES.items()}
    no_text = np.zeros_like(text)
    rows: dict[str, Any] = {}
    for depth in depths:
        scores, fits = cross_fitted_cascade(lists, first, text, depth, seed)
        control_scores, _ = cross_fitted_cascade(lists, first, no_text, depth, seed)
        per_list = list_ndcg10(scores, lists)
        control = list_ndcg10(control_scores, lists)
        entry: dict[str, Any] = {"all": _slice(per_list, reference, control)}
        for name, (_, ceiling) in SLICES.items():
            keep = targets[name] <= ceiling
            entry[name] = _slice(per_list[keep], reference[keep], control[keep])
        entry["ms_per_call"] = ms_per_call.get(depth) if ms_per_call is not None else None
        entry["second_pass_rounds"] = [f.get("rounds") for f in fits]
        rows[str(depth)] = entry
    earning = {
        d: e["all"]["minus_first_pass"]
        for d, e in rows.items()
        if _beats(e["all"], "first_pass") and _beats(e["all"], "control")
    }
    served = max(earning, key=lambda d: earning[d]) if earning else None
    return {
        "depths": rows,
        "served_depth": int(served) if served else None,
        "served": f"cascade, top {served}" if served else "features ranker (no text pass)",
    }
