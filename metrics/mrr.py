"""Mean reciprocal rank (MRR@K)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metrics._core import FloatArray, Relevant, hits_and_counts, reduce


def mrr_at_k(
    ranked: npt.ArrayLike, relevant: Relevant, k: int, *, per_user: bool = False
) -> FloatArray | float:
    r"""MRR@K: the reciprocal rank of the first relevant item in the top K (0 if none).

    .. math:: \mathrm{RR@K}(u) = \max_{i \le K,\ \mathrm{rel}_i = 1} \frac{1}{i}

    (Voorhees, "The TREC-8 Question Answering Track Report", 1999; ranx's ``mrr@k``.)
    """
    hits, n_rel = hits_and_counts(ranked, relevant, k)
    any_hit = hits.any(axis=1)
    first = np.argmax(hits, axis=1)
    per = np.where(any_hit, 1.0 / (first + 1), 0.0)
    return reduce(per, n_rel, per_user)
