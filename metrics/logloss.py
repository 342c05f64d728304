"""Binary cross-entropy of probabilities (log loss)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def logloss(probabilities: npt.ArrayLike, labels: npt.ArrayLike, *, eps: float = 1e-7) -> float:
    r"""Mean binary log loss.

    .. math:: \mathcal{L} = -\frac{1}{n}\sum_i y_i \log p_i + (1-y_i)\log(1-p_i)

    Probabilities are clipped to :math:`[\epsilon, 1-\epsilon]` so a confident mistake costs a
    large finite amount instead of infinity.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probabilities ({p.shape}) and labels ({y.shape}) differ in length")
    if p.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def expected_calibration_error(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, *, bins: int = 10
) -> float:
    r"""ECE with equal-width bins.

    .. math:: \mathrm{ECE} = \sum_b \frac{|B_b|}{n} \left| \bar{y}_b - \bar{p}_b \right|

    (Naeini, Cooper & Hauskrecht, AAAI 2015; Guo et al., ICML 2017.)
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return float("nan")
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError("expected probabilities in [0, 1] (a score is not calibrated)")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    p_sum = np.bincount(idx, weights=p, minlength=bins)
    y_sum = np.bincount(idx, weights=y, minlength=bins)
    nz = counts > 0
    return float((np.abs(y_sum[nz] - p_sum[nz])).sum() / p.size)
