"""Point-wise cross-encoder reranking: training, batched inference, fast backends."""

from rerank.inference import BACKENDS, Reranker, Scored, export_onnx
from rerank.model import RerankerConfig

__all__ = ["BACKENDS", "Reranker", "RerankerConfig", "Scored", "export_onnx"]
