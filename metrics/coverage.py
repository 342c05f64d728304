"""Catalog coverage."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metrics._core import as_ranked, check_k


def coverage_at_k(ranked: npt.ArrayLike, k: int, n_items: int) -> float:
    r"""The share of the catalog that appears in at least one user's top K.

    .. math:: \mathrm{Coverage@K} = \frac{|\bigcup_u \mathrm{top}_K(u)|}{|I|}

    (Ge, Delgado-Battenfeld & Jannach, "Beyond accuracy", RecSys 2010.)
    """
    check_k(k)
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    top = as_ranked(ranked)[:, :k]
    return float(len(np.unique(top[top >= 0])) / n_items)
