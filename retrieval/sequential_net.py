"""The sequential tower's network: an item side (text adaptor + ID vectors) and a user side (a
GRU over the item side of the user's recent items), both on the unit sphere.

Its own module so that importing :mod:`retrieval.sequential` (index builds, serving) does not
import torch until a tower is trained or loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SeqNet(nn.Module):
    """Items: ``normalize(adaptor(text) + ID vector)``; users: ``normalize(out(GRU(items)))``.

    Args:
        text_dim: width of the frozen text vectors.
        n_items: items with an ID vector (row 0 is "none").
        dim: width of the learned space.
        use_ids: learn per-item ID vectors beside the adaptor.
    """

    def __init__(self, text_dim: int, n_items: int, dim: int, use_ids: bool) -> None:
        super().__init__()
        self.adaptor = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.ids = nn.Embedding(n_items + 1, dim, padding_idx=0) if use_ids else None
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, dim)

    def items(self, text: Any, id_rows: Any, drop: float = 0.0) -> Any:
        """Unit item vectors; ``drop``: the probability of zeroing an item's ID vector."""
        vec = self.adaptor(text)
        if self.ids is not None:
            idv = self.ids(id_rows)
            if drop > 0:
                keep = (torch.rand(idv.shape[0], 1) >= drop).to(idv.dtype)
                idv = idv * keep
            vec = vec + idv
        return torch.nn.functional.normalize(vec, dim=-1)

    def users(self, seq_vectors: Any) -> Any:
        """Unit user vectors after every position of the item-vector sequences."""
        hidden, _ = self.gru(seq_vectors)
        return torch.nn.functional.normalize(self.out(hidden), dim=-1)
