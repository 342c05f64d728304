"""The point-wise cross-encoder over user-item text pairs, shaped like sentence-transformers'
``cross_encoder/``: the network (:mod:`.model`), its pairs and features (:mod:`.pairs`), the
first stage it learns from (:mod:`.context`), batches (:mod:`.collator`), the training
arguments (:mod:`.training_args`) and loop (:mod:`.trainer`), validation (:mod:`.evaluation`),
calibration and fusion (:mod:`.calibration`, :mod:`.fusion`), batched inference
(:mod:`.inference`), its backends (:mod:`.backends`) and ONNX export (:mod:`.export`).

``RerankerConfig`` says what a saved cross-encoder is; ``RerankerTrainArgs`` how one is trained
(:func:`rerank.cross_encoder.trainer.train_reranker` is not imported here). The names below
load on first use, so the training arguments (and the CLI's defaults, read from them) stay
free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from catalog.faces import lazy_faces

if TYPE_CHECKING:  # the real types for checkers; at run time each loads on first use
    from rerank.cross_encoder.backends import BACKENDS
    from rerank.cross_encoder.export import export_onnx
    from rerank.cross_encoder.inference import Reranker, Scored
    from rerank.cross_encoder.model import RerankerConfig
    from rerank.cross_encoder.training_args import RerankerTrainArgs

_FACES = {
    "BACKENDS": "rerank.cross_encoder.backends",
    "export_onnx": "rerank.cross_encoder.export",
    "Reranker": "rerank.cross_encoder.inference",
    "Scored": "rerank.cross_encoder.inference",
    "RerankerConfig": "rerank.cross_encoder.model",
    "RerankerTrainArgs": "rerank.cross_encoder.training_args",
}

__all__ = ["BACKENDS", "Reranker", "RerankerConfig", "RerankerTrainArgs", "Scored", "export_onnx"]

__getattr__ = lazy_faces(__name__, _FACES)
