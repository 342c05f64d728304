"""Recall@K."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metrics._core import FloatArray, Relevant, hits_and_counts, reduce


def recall_at_k(
    ranked: npt.ArrayLike, relevant: Relevant, k: int, *, per_user: bool = False
) -> FloatArray | float:
    r"""Recall@K: the share of a user's relevant items found in the top K.

    .. math:: \mathrm{Recall@K}(u) = \frac{|\mathrm{top}_K(u) \cap R_u|}{|R_u|}

    Averaged over users with :math:`|R_u| > 0` (others are NaN per user). With one held-out
    item per user (leave-one-out) it equals HR@K. Follows trec_eval's ``recall_K``
    (Manning, Raghavan & Schütze, *Introduction to Information Retrieval*, 2008, ch. 8).
    """
    hits, n_rel = hits_and_counts(ranked, relevant, k)
    per = hits.sum(axis=1) / np.maximum(n_rel, 1)
    return reduce(per.astype(np.float64), n_rel, per_user)
