"""Hit rate (HR@K)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metrics._core import FloatArray, Relevant, hits_and_counts, reduce


def hit_rate_at_k(
    ranked: npt.ArrayLike, relevant: Relevant, k: int, *, per_user: bool = False
) -> FloatArray | float:
    r"""HR@K: 1 if any relevant item is in the top K, else 0.

    .. math:: \mathrm{HR@K}(u) = \mathbb{1}\left[\,|\mathrm{top}_K(u) \cap R_u| > 0\,\right]

    Averaged over users with relevant items (He et al., "Neural Collaborative Filtering",
    WWW 2017).
    """
    hits, n_rel = hits_and_counts(ranked, relevant, k)
    per = np.asarray(hits.any(axis=1), dtype=np.float64)
    return reduce(per, n_rel, per_user)
