"""The second stages, one subpackage per model family (the shape of sentence-transformers'
``cross_encoder/`` beside ``sparse_encoder/``):

- :mod:`rerank.ranker`: the ranking stage, a LightGBM ranker over several candidate sources'
  merged candidates (the served default where it beats the first stage on validation). Its
  face is :class:`~rerank.ranker.GBDTRanker`; importing it never imports torch.
- :mod:`rerank.cross_encoder`: the point-wise cross-encoder over user-item text pairs
  (training, batched inference, fast backends, export). Its face is
  :class:`~rerank.cross_encoder.Reranker`.

The names below are loaded on first use, so ``import rerank.ranker`` stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from catalog.faces import lazy_faces

if TYPE_CHECKING:  # the real types for checkers; at run time each loads on first use
    from rerank.cross_encoder import (
        BACKENDS,
        Reranker,
        RerankerConfig,
        RerankerTrainArgs,
        Scored,
        export_onnx,
    )
    from rerank.ranker import GBDTRanker, LikeModel, RankerConfig, RankingStageArgs, StageTables

_FACES = {
    "GBDTRanker": "rerank.ranker",
    "LikeModel": "rerank.ranker",
    "RankerConfig": "rerank.ranker",
    "RankingStageArgs": "rerank.ranker",
    "StageTables": "rerank.ranker",
    "BACKENDS": "rerank.cross_encoder",
    "Reranker": "rerank.cross_encoder",
    "RerankerConfig": "rerank.cross_encoder",
    "RerankerTrainArgs": "rerank.cross_encoder",
    "Scored": "rerank.cross_encoder",
    "export_onnx": "rerank.cross_encoder",
}

__all__ = [
    "BACKENDS",
    "GBDTRanker",
    "LikeModel",
    "RankerConfig",
    "RankingStageArgs",
    "Reranker",
    "RerankerConfig",
    "RerankerTrainArgs",
    "Scored",
    "StageTables",
    "export_onnx",
]


__getattr__ = lazy_faces(__name__, _FACES)
