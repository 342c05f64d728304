"""Area under the ROC curve, global and averaged per user."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    n = len(values)
    boundary = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate(([0], boundary))
    ends = np.append(boundary, n)
    avg = (starts + ends + 1) / 2.0  # average of 1-based ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    r"""ROC AUC: the probability that a random positive outscores a random negative.

    .. math:: \mathrm{AUC} = \frac{\sum_{i \in P} r_i - |P|(|P|+1)/2}{|P|\,|N|}

    where :math:`r_i` are 1-based ranks of all scores (ties get their average rank, so a tie
    counts one half): the Mann-Whitney U statistic (Hanley & McNeil, Radiology 1982).
    NaN when only one class is present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and labels ({y.shape}) differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_user_auc(scores: npt.ArrayLike, labels: npt.ArrayLike, groups: npt.ArrayLike) -> float:
    r"""Mean of :func:`auc` over groups (users) that have both classes (GAUC without weights).

    .. math:: \mathrm{uAUC} = \frac{1}{|U'|} \sum_{u \in U'} \mathrm{AUC}(u)

    Users with only positives or only negatives are left out; NaN when none qualifies.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    g = np.asarray(groups).reshape(-1)
    if not (len(s) == len(y) == len(g)):
        raise ValueError("scores, labels and groups must have the same length")
    order = np.argsort(g, kind="stable")
    g_sorted = g[order]
    bounds = np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1
    values = []
    for part in np.split(order, bounds):
        value = auc(s[part], y[part]) if len(part) else float("nan")
        if not np.isnan(value):
            values.append(value)
    return float(np.mean(values)) if values else float("nan")
