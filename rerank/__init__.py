"""The ranking stage: the features ranker over several candidate sources (the served default)
and the point-wise cross-encoder (training, batched inference, fast backends).

``GBDTRanker`` is a trained ranking stage (``train ranker``: :mod:`rerank.ranker_train`),
``StageTables`` what its sources and features read. ``RerankerConfig`` says what a saved
cross-encoder is; ``RerankerTrainArgs`` how one is trained (:func:`rerank.trainer.train_reranker`,
which imports torch, is not imported here)."""

from rerank.gbdt import GBDTRanker, LikeModel, RankerConfig
from rerank.inference import BACKENDS, Reranker, Scored, export_onnx
from rerank.model import RerankerConfig
from rerank.ranker_train import RankingStageArgs
from rerank.tables import StageTables
from rerank.training_args import RerankerTrainArgs

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
