"""Implicit ALS and its exact user step (fold-in)."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.als import fold_in


@pytest.mark.parametrize("alpha", [10.0, 1.0])  # 1.0: all users in one solve
def test_fold_in_solves_the_als_user_step_exactly(alpha: float) -> None:
    rng = np.random.default_rng(1)
    factors = rng.normal(size=(12, 4)).astype(np.float32)
    factors[0] = 0.0
    users = [[3, 5, 5, 9, 0], [], [1, 2]]  # a repeat counts once; row 0 (no ID) is ignored
    reg = 0.1
    x = fold_in(factors, users, reg, alpha)
    # the weighted least squares ALS solves for one user: confidence alpha on the interacted
    # rows (preference 1), 1 elsewhere (preference 0), ridge reg
    y = factors.astype(np.float64)
    for n, known in ((0, [3, 5, 9]), (2, [1, 2])):
        conf = np.ones(len(y))
        pref = np.zeros(len(y))
        conf[known], pref[known] = alpha, 1.0
        a = y.T @ (conf[:, None] * y) + reg * np.eye(4)
        expected = np.linalg.solve(a, y.T @ (conf * pref))
        np.testing.assert_allclose(x[n], expected, rtol=1e-4, atol=1e-5)
    assert not x[1].any()  # no history: no collaborative vector


def test_als_fits_without_the_blas_threads_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """implicit checks the BLAS threads when a model is built; we limit them around the fit,
    so the build must be inside the limit too, or every evaluation prints a false alarm."""
    import warnings

    import implicit.utils
    import scipy.sparse as sp

    from retrieval.als import implicit_als

    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)
    matrix = sp.csr_matrix((np.random.default_rng(0).random((30, 20)) < 0.2).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        users, items = implicit_als(matrix, 4, 0.1, 1.0, 2, 0)
    assert users.shape == (30, 4) and items.shape == (20, 4)
