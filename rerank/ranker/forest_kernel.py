"""The walk of :class:`rerank.ranker.forest.Forest`, compiled by numba (imported only where
numba is installed). It is LightGBM's dense-row reader, ``Tree::NumericalDecision`` and
``PredictRaw``: |v| <= 1e-35f reads as 0, NaN reads as 0 unless the split sends NaN its own
way, a zero-missing split sends 0 its default way, else ``v <= threshold`` goes left; each
row's leaves are summed tree by tree in double, from tree 0, as LightGBM sums them. Trees are
the outer loop so one tree's nodes stay in the cache across a request's rows."""

from __future__ import annotations

import numba
import numpy as np

ZERO = float(np.float32(1e-35))
"""LightGBM's ``kZeroThreshold`` (a float), as the double it is compared as."""
DEFAULT_LEFT = 2
ZERO_MISSING = 1
NAN_MISSING = 2


@numba.njit(cache=True, nogil=True)
def walk(x, roots, feature, threshold, decision, left, right, leaf, out):  # type: ignore[no-untyped-def]
    rows = x.shape[0]
    values = np.empty(x.shape, dtype=np.float64)
    for r in range(rows):
        for f in range(x.shape[1]):
            v = np.float64(x[r, f])
            values[r, f] = 0.0 if -ZERO <= v <= ZERO else v
    for r in range(rows):
        out[r] = 0.0
    for t in range(roots.shape[0]):
        root = roots[t]
        for r in range(rows):
            node = root
            while node >= 0:
                value = values[r, feature[node]]
                missing = (decision[node] >> 2) & 3
                if (missing == ZERO_MISSING and (value == 0.0 or np.isnan(value))) or (
                    missing == NAN_MISSING and np.isnan(value)
                ):  # the split's missing value: its default side
                    node = left[node] if decision[node] & DEFAULT_LEFT else right[node]
                elif value <= threshold[node] or (np.isnan(value) and threshold[node] >= 0.0):
                    node = left[node]  # (NaN where NaN is not missing reads as 0)
                else:
                    node = right[node]
            out[r] += leaf[-node - 1]
