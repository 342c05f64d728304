"""Point-wise cross-encoder reranking: training, batched inference, fast backends.

``RerankerConfig`` says what a saved model is; ``RerankerTrainArgs`` how one is trained
(:func:`rerank.trainer.train_reranker`, which imports torch, is not imported here)."""

from rerank.inference import BACKENDS, Reranker, Scored, export_onnx
from rerank.model import RerankerConfig
from rerank.training_args import RerankerTrainArgs

__all__ = ["BACKENDS", "Reranker", "RerankerConfig", "RerankerTrainArgs", "Scored", "export_onnx"]
