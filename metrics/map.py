"""Mean average precision (MAP@K)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metrics._core import FloatArray, Relevant, hits_and_counts, reduce


def map_at_k(
    ranked: npt.ArrayLike, relevant: Relevant, k: int, *, per_user: bool = False
) -> FloatArray | float:
    r"""MAP@K: precision at each relevant rank within K, summed, over the number relevant.

    .. math:: \mathrm{AP@K}(u) = \frac{1}{|R_u|} \sum_{i=1}^{K} \mathrm{P@i}(u)\,\mathrm{rel}_i

    The denominator is :math:`|R_u|`, as in trec_eval's ``map_cut_K`` and ranx's ``map@k``
    (Manning et al., *Introduction to Information Retrieval*, 2008, ch. 8.4).
    """
    hits, n_rel = hits_and_counts(ranked, relevant, k)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = np.cumsum(hits, axis=1) / ranks
    per = (precision * hits).sum(axis=1) / np.maximum(n_rel, 1)
    return reduce(per.astype(np.float64), n_rel, per_user)
