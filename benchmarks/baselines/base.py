"""What every baseline is: a scorer fitted on training data that scores the whole catalog."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

Floats = npt.NDArray[np.float32]
Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainData:
    """A fold's training interactions in the two shapes baselines read.

    ``matrix`` is binary users x items (repeats count once); ``sequences[r]`` is user row
    ``r``'s item columns oldest first (ties in the split's seeded order), for methods that
    read order: SASRec and item-kNN's recency weighting.
    """

    matrix: sp.csr_matrix
    sequences: Sequence[npt.NDArray[np.int64]]

    def __post_init__(self) -> None:
        if len(self.sequences) != self.matrix.shape[0]:
            raise ValueError(
                f"{len(self.sequences)} sequences for a matrix of {self.matrix.shape[0]} users"
            )

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], n_items: int) -> TrainData:
        """Both shapes from ordered item columns per user (tests and small tools)."""
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
        rows = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
        cols = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        matrix = sp.csr_matrix(
            (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(seqs), n_items)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return cls(matrix, seqs)

    @property
    def n_items(self) -> int:
        """Catalog size (columns)."""
        return int(self.matrix.shape[1])


@dataclass(frozen=True)
class Validation:
    """Next-item targets a scorer may early-stop on: user rows and each one's target column."""

    rows: Rows
    targets: Rows


class Scorer(ABC):
    """A method that scores every item for a block of users.

    ``params`` are the settings a grid varies and the report records; :meth:`refit_params`
    are those to refit with on train + validation (a method that early-stops returns the
    epochs it chose).
    """

    name: str = ""
    params: dict[str, Any]

    @abstractmethod
    def fit(self, data: TrainData, validation: Validation | None = None) -> Scorer:
        """Learns from ``data``; ``validation`` only where the method early-stops."""

    @abstractmethod
    def scores(self, user_rows: Rows) -> Floats:
        """(len(user_rows), n_items) scores for rows of the fitted data; higher is better."""

    def refit_params(self) -> dict[str, Any]:
        """The settings to refit with on train + validation once chosen."""
        return dict(self.params)

    def refitted(self) -> Scorer:
        """A fresh scorer with :meth:`refit_params` (fit it on train + validation)."""
        return type(self)(**self.refit_params())
