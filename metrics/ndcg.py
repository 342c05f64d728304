"""Normalized discounted cumulative gain (NDCG@K)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metrics._core import FloatArray, Relevant, hits_and_counts, reduce


def ndcg_at_k(
    ranked: npt.ArrayLike, relevant: Relevant, k: int, *, per_user: bool = False
) -> FloatArray | float:
    r"""NDCG@K with binary relevance.

    .. math::
        \mathrm{DCG@K}(u) = \sum_{i=1}^{K} \frac{\mathrm{rel}_i}{\log_2(i+1)}, \qquad
        \mathrm{NDCG@K}(u) = \frac{\mathrm{DCG@K}(u)}{\sum_{i=1}^{\min(K, |R_u|)} 1/\log_2(i+1)}

    (Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques", TOIS 2002;
    the same as trec_eval's ``ndcg_cut_K`` and ranx's ``ndcg@k`` on binary judgments.)
    """
    hits, n_rel = hits_and_counts(ranked, relevant, k)
    width = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, max(width, k) + 2))
    dcg = (hits * discounts[:width]).sum(axis=1)
    ideal_cum = np.concatenate(([0.0], np.cumsum(discounts)))
    idcg = ideal_cum[np.minimum(n_rel, k)]
    per = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return reduce(per, n_rel, per_user)
