"""Item vectors by id: the lookup the pooling user tower and the trainers share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


@dataclass
class ItemVectors:
    """A (n, dim) matrix of unit vectors and the item id of each row."""

    ids: list[str]
    matrix: Matrix
    _pos: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.matrix):
            raise ValueError(f"{len(self.ids)} ids but {len(self.matrix)} vectors")
        self._pos = {item_id: i for i, item_id in enumerate(self.ids)}

    @classmethod
    def sharing(cls, ids: list[str], matrix: Matrix, positions: dict[str, int]) -> ItemVectors:
        """Vectors over ``ids`` whose id-to-row map another owner has built (an index's):
        held, not rebuilt (a dict of a million ids costs about 100 MB)."""
        if len(ids) != len(matrix) or len(positions) != len(ids):
            raise ValueError(f"{len(ids)} ids, {len(matrix)} vectors, {len(positions)} positions")
        out = cls.__new__(cls)
        out.ids, out.matrix, out._pos = ids, matrix, positions
        return out

    def with_matrix(self, matrix: Matrix) -> ItemVectors:
        """The same ids and id-to-row map (held, not rebuilt) over another matrix."""
        return ItemVectors.sharing(self.ids, matrix, self._pos)

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.matrix.shape[1])

    def rows(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row of each id; -1 for unknown ids."""
        return np.array([self._pos.get(i, -1) for i in ids], dtype=np.int64)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._pos

    def __len__(self) -> int:
        return len(self.ids)


def normalize(matrix: npt.NDArray[np.floating]) -> Matrix:
    """Rows scaled to unit length; zero rows stay zero."""
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return np.where(norms > 0, m / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
