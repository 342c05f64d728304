"""The project's one rule for a mean rating with little evidence: shrunk toward a prior."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

Number = TypeVar("Number", float, npt.NDArray[np.float64])


def shrunk_mean(total: Number, count: Number | int, prior: Number, shrink: float) -> Number:
    """``(total + shrink * prior) / (count + shrink)``: ``count`` ratings summing to ``total``
    pulled toward ``prior`` by ``shrink`` pseudo-ratings (no evidence gives the prior). For
    scalars and numpy arrays alike; item and user means, in the ranking stage's features and
    the cross-encoder's, all read it here."""
    return (total + shrink * prior) / (count + shrink)
