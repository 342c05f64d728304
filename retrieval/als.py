"""Implicit ALS (Hu, Koren & Volinsky, ICDM 2008) through ``implicit``, and its exact user step.

One fit serves the sequential tower's collaborative block and the ALS baseline, so the block is
as strong as the baseline it is compared with; :func:`fold_in` solves a user's factors from
their history alone, so new users and new events need no refit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.text import HistoryEvent

Matrix = npt.NDArray[np.float32]

COLLAB_SETTINGS: tuple[tuple[int, float, float], ...] = tuple(
    (f, r, a) for f in (32, 64, 128) for r in (0.01, 0.1) for a in (1.0, 10.0)
)
"""(factors, regularisation, alpha) of the ALS fits tried on validation for the collaborative
block: the grid the offline evaluation tunes its ALS baseline over."""


def fit_als(
    histories: Mapping[str, Sequence[HistoryEvent]],
    item_rows: Mapping[str, int],
    *,
    factors: int,
    reg: float,
    alpha: float,
    iterations: int,
    seed: int,
) -> Matrix:
    """Implicit ALS item factors by ID row (row 0, "no ID vector", stays zero).

    The interactions are binary (a repeated event counts once), as in the ALS baseline.
    """
    import scipy.sparse as sp

    rows: list[int] = []
    cols: list[int] = []
    for n, user in enumerate(sorted(histories)):
        known = {item_rows[e.item_id] for e in histories[user] if e.item_id in item_rows}
        rows += [n] * len(known)
        cols += sorted(known)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)),
        shape=(len(histories), len(item_rows) + 1),
    )
    _, item_factors = implicit_als(matrix, factors, reg, alpha, iterations, seed)
    item_factors[0] = 0.0
    return item_factors


def implicit_als(
    matrix: Any, factors: int, reg: float, alpha: float, iterations: int, seed: int
) -> tuple[Matrix, Matrix]:
    """(user, item) factors of ``implicit``'s ALS on a (users, items) matrix: the one fit the
    collaborative block and the ALS baseline share, so the block is as strong as the baseline."""
    import implicit
    from threadpoolctl import threadpool_limits

    # implicit's own advice: BLAS threads fight its solver. The model is built inside the limit
    # too, since its constructor checks the BLAS threads and warns when they are not 1.
    with threadpool_limits(1, "blas"):
        model = implicit.cpu.als.AlternatingLeastSquares(
            factors=factors,
            regularization=reg,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
            calculate_training_loss=False,
        )
        model.fit(matrix.astype(np.float32), show_progress=False)
    return (
        np.array(model.user_factors, dtype=np.float32),
        np.array(model.item_factors, dtype=np.float32),
    )


def als_gram(factors: Matrix, reg: float) -> npt.NDArray[np.float64]:
    """``Y'Y + reg I``: the part of every user's ALS system shared by all users."""
    y = factors.astype(np.float64)
    gram: npt.NDArray[np.float64] = y.T @ y + reg * np.eye(y.shape[1])
    return gram


def fold_in(
    factors: Matrix,
    user_rows: Sequence[Sequence[int]],
    reg: float,
    alpha: float,
    gram: npt.NDArray[np.float64] | None = None,
) -> Matrix:
    """ALS's own user step for each user's item rows (exact least squares, implicit's
    confidence ``alpha`` on interacted items), so a user needs no refit: new users and new
    events are folded in at request time. ``gram``: :func:`als_gram`, when cached."""
    gram = als_gram(factors, reg) if gram is None else gram
    out = np.zeros((len(user_rows), factors.shape[1]), dtype=np.float32)
    known_rows = [sorted({r for r in rows if r > 0}) for rows in user_rows]
    if alpha == 1.0:
        # Unit confidence adds nothing to the Gram matrix: every user solves the same system,
        # so one solve serves them all (the per-user loop cost minutes in pair building).
        users = [n for n, known in enumerate(known_rows) if known]
        if users:
            sums = np.stack([factors[known_rows[n]].astype(np.float64).sum(axis=0) for n in users])
            out[users] = np.linalg.solve(gram, sums.T).T
        return out
    for n, known in enumerate(known_rows):
        if not known:
            continue
        yu = factors[known].astype(np.float64)
        out[n] = np.linalg.solve(gram + (alpha - 1.0) * yu.T @ yu, alpha * yu.sum(axis=0))
    return out
