"""The first stage: the text encoder and its Redis embedding cache, FAISS indexes, user towers
(text, pooled, the trained sequential tower), candidate sources and the text model's
fine-tuning. The names below load on first use: importing the index or the sources does not
load torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from catalog.faces import lazy_faces

if TYPE_CHECKING:
    from retrieval.cache import EmbeddingCache
    from retrieval.encoder import Encoder
    from retrieval.index import FlatIndex, HNSWIndex, IVFPQIndex, VectorIndex, load_index
    from retrieval.towers import HistoryTextTower, MeanItemsTower, UserState, UserTower
    from retrieval.vectors import ItemVectors

_FACES = {
    "EmbeddingCache": "retrieval.cache",
    "Encoder": "retrieval.encoder",
    "FlatIndex": "retrieval.index",
    "HNSWIndex": "retrieval.index",
    "IVFPQIndex": "retrieval.index",
    "VectorIndex": "retrieval.index",
    "load_index": "retrieval.index",
    "HistoryTextTower": "retrieval.towers",
    "MeanItemsTower": "retrieval.towers",
    "UserState": "retrieval.towers",
    "UserTower": "retrieval.towers",
    "ItemVectors": "retrieval.vectors",
}

__all__ = [
    "EmbeddingCache",
    "Encoder",
    "FlatIndex",
    "HNSWIndex",
    "HistoryTextTower",
    "IVFPQIndex",
    "ItemVectors",
    "MeanItemsTower",
    "UserState",
    "UserTower",
    "VectorIndex",
    "load_index",
]

__getattr__ = lazy_faces(__name__, _FACES)
