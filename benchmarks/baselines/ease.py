"""EASE (Steck, WWW 2019): a closed-form item-item model, ``B = I - P / diag(P)`` with
``P = (X^T X + lambda I)^-1`` and the diagonal of B constrained to zero.

It is one dense solve over the catalog: memory grows with items squared (three float64
items x items matrices at the peak: about 2.3 GB for 10,000 items, 21 GB for 30,000) and time
with items cubed, whatever the number of users. Above ``max_items`` it refuses rather than
exhaust the machine; item-kNN or ALS are the baselines that scale past that.
"""

from __future__ import annotations

import numpy as np

from benchmarks.baselines.base import Floats, Rows, Scorer, TrainData, Validation

MAX_ITEMS = 20_000
"""Default ceiling: 3 x 20,000^2 float64 = 9.6 GB at the peak, within a 24 GiB machine."""


class CatalogTooLargeError(ValueError):
    """The catalog is beyond what a dense items x items solve can hold."""


def ease_peak_bytes(n_items: int) -> int:
    """Memory at the peak of the solve: Gram matrix, its inverse and B, float64."""
    return 3 * n_items * n_items * 8


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix, overwriting ``a``."""
    from scipy.linalg import lapack

    factor, info = lapack.dpotrf(a, lower=False, overwrite_a=True)
    if info == 0:
        inv, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE Gram matrix not positive definite (LAPACK info {info})")
    upper: np.ndarray = np.triu(inv)
    full: np.ndarray = upper + np.triu(upper, 1).T
    return full


class EASEScorer(Scorer):
    """EASE with L2 strength ``lam``; scores are ``X_u B``."""

    name = "ease"

    def __init__(self, lam: float = 500.0, max_items: int = MAX_ITEMS) -> None:
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.params = {"lam": lam}
        self.max_items = max_items
        self.data: TrainData | None = None
        self.weights: Floats = np.zeros((0, 0), dtype=np.float32)

    def refitted(self) -> EASEScorer:
        return EASEScorer(**self.refit_params(), max_items=self.max_items)

    def fit(self, data: TrainData, validation: Validation | None = None) -> EASEScorer:
        n = data.n_items
        if n > self.max_items:
            raise CatalogTooLargeError(
                f"EASE needs a dense {n:,} x {n:,} solve: about "
                f"{ease_peak_bytes(n) / 1e9:.1f} GB at the peak, above its limit of "
                f"{self.max_items:,} items ({ease_peak_bytes(self.max_items) / 1e9:.1f} GB); "
                "raise max_items on a machine with that memory, or use item-kNN or ALS"
            )
        x = data.matrix.astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(n)] += float(self.params["lam"])
        p = _spd_inverse(gram)  # Cholesky: half the work of a general inverse
        del gram
        b = p / (-np.diag(p))  # column j divided by -P_jj
        b[np.diag_indices(n)] = 0.0
        self.weights = b.astype(np.float32)
        self.data = data
        return self

    def scores(self, user_rows: Rows) -> Floats:
        assert self.data is not None
        out = self.data.matrix[user_rows].astype(np.float32) @ self.weights
        return np.asarray(out, dtype=np.float32)
