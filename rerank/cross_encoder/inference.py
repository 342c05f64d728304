"""Batched point-wise scoring behind one interface (:class:`Reranker`), with interchangeable
backends (:mod:`rerank.cross_encoder.backends`), and the shortcut that skips the transformer
when the fused head gives the text no weight (:func:`unweighted_text_head`).

``score`` is split into pre (tokenize pairs, sort by length), core (the backend's forward on
dynamically padded batches) and post (temperature, head -> probability, original order), so each
part is testable and the core is the only backend-specific step.

Backends: ``torch`` (fp32), ``torch-bf16`` (bf16 autocast on CPUs that support it),
``onnx`` (ONNX Runtime fp32) and ``onnx-int8`` (dynamically quantized weights); ``auto``
picks the fastest of them for the CPU and the model folder. The ONNX
files load with onnxruntime and the tokenizer alone, without the training code.

For a ``user_prefix`` model (:mod:`rerank.cross_encoder.model`) every backend encodes the user
side once per call and then only the candidates' item tokens (ONNX: two exported graphs,
``user.onnx`` and ``items.onnx``; an export without them scores whole pairs, same numbers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from rerank.cross_encoder.backends import (
    AUTO,
    BACKENDS,
    ONNX_FILES,
    Backend,
    Floats,
    OnnxBackend,
    TorchBackend,
    exported,
    probability_np,
    resolve_backend,
)
from rerank.cross_encoder.model import ITEM_TOKENS, RerankerConfig, read_config, split_pair_ids

if TYPE_CHECKING:
    from retrieval.cache import EmbeddingCache


@dataclass(frozen=True)
class Scored:
    """One reranked candidate."""

    item_id: str
    probability: float


class Reranker:
    """Scores (user text, item text) pairs point-wise.

    Args:
        folder: a trained reranker folder (``duorank train reranker``).
        backend: one of :data:`BACKENDS`, or ``auto`` (:func:`resolve_backend`).
        batch_size: pairs per forward pass.
        threads: intra-op threads for ONNX Runtime (default: all cores).
        spin: let ONNX Runtime's threads busy-wait between runs (its default; off here, as a
            server interleaves it with torch).
        item_cache: a :class:`retrieval.cache.EmbeddingCache` (float16 suits) that keeps an
            item-layers model's item states across calls and processes (default: none, each
            call computes its candidates' states).
        skip_unweighted_text: when the head gives the pooled text no weight (the validation
            fusion chose the features alone: ``text_scale`` 0 in the card), score from the
            features alone, the same logits without tokenizing or running the transformer.
            False runs the text pass anyway (to measure it).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        backend: str = "torch",
        batch_size: int = 32,
        threads: int | None = None,
        spin: bool = False,
        item_cache: EmbeddingCache | None = None,
        skip_unweighted_text: bool = True,
    ) -> None:
        from transformers import AutoTokenizer

        if backend not in (AUTO, *BACKENDS):
            raise ValueError(
                f"unknown backend {backend!r}; choose from {', '.join((AUTO, *BACKENDS))}"
            )
        self.folder = Path(folder)
        backend = resolve_backend(self.folder, backend)
        self.config = read_config(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.folder / "backbone", trust_remote_code=False
        )
        self.batch_size = batch_size
        self._backend = backend
        self._threads, self._spin = threads, spin
        if not backend.startswith("torch") and not exported(self.folder, backend):
            path = self.folder / "onnx" / ONNX_FILES[backend]
            raise FileNotFoundError(f"{path} not found: run `duorank rerank export` first")
        if self.config.item_layers and not backend.startswith("torch"):
            raise ValueError(
                f"{self.folder} has item layers (item_layers {self.config.item_layers}): it "
                "serves on the torch backends (torch, torch-bf16)"
            )
        self.item_cache = item_cache
        self._states_key = (
            _states_key(self.folder, self.config, backend) if self.config.item_layers else ""
        )
        self.features_only = unweighted_text_head(self.folder) if skip_unweighted_text else None
        self._core: Backend | None = None
        if self.features_only is not None:
            logging.getLogger(__name__).info(
                "reranker %s gives its text no weight: scoring from its features alone "
                "(no transformer pass; the transformer is not loaded)",
                self.folder,
            )
        else:
            self._core = self._load_core()

    def _load_core(self) -> Backend:
        if self._backend.startswith("torch"):
            return TorchBackend(self.folder, bf16=self._backend == "torch-bf16")
        return OnnxBackend(self.folder, self._backend, self._threads, self._spin)

    @property
    def core(self) -> Backend:
        """The transformer backend; loaded on first use when the head ignores the text (it
        never runs then, unless asked for directly)."""
        if self._core is None:
            self._core = self._load_core()
        return self._core

    @property
    def backend(self) -> str:
        """The backend's name."""
        return self._backend

    # ------------------------------------------------------------------ pre
    def encode_pairs(self, user_text: str, item_texts: Sequence[str]) -> list[list[int]]:
        """Token ids per pair. The user text comes first and is listed most recent first, so
        truncation (longest side first, from its end; for ``user_prefix`` models the user side
        to leave the item its share) trims the oldest history first."""
        if self.config.attention == "user_prefix":
            prefix, items = split_pair_ids(
                self.tokenizer, user_text, item_texts, self.config.max_length
            )
            return [prefix + row for row in items]
        enc = self.tokenizer(
            [user_text] * len(item_texts),
            list(item_texts),
            truncation=True,
            max_length=self.config.max_length,
        )
        ids: list[list[int]] = enc["input_ids"]
        return ids

    def _pad(
        self, rows: Sequence[list[int]], types: int | None = None
    ) -> dict[str, npt.NDArray[np.int64]]:
        """Pads rows into a batch; token types from the first [SEP] on unless ``types``."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        sep = self.tokenizer.sep_token_id
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        token_types = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
            if types is not None:
                token_types[i, : len(row)] = types
                continue
            first_sep = row.index(sep) if sep in row else len(row)
            token_types[i, first_sep + 1 : len(row)] = 1  # second segment: the item
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}

    # ------------------------------------------------------------------ core + post
    def logits(
        self, user_text: str, item_texts: Sequence[str], features: npt.ArrayLike | None = None
    ) -> Floats:
        """Raw logits per pair, in the given order."""
        n = len(item_texts)
        if n == 0:
            return np.zeros((0, self.config.n_outputs), dtype=np.float32)
        feats = self._features(features, n)
        if self.features_only is not None:  # the text's weight is zero: its pass is pure cost
            return self.features_only.logits(feats)
        out = np.zeros((n, self.config.n_outputs), dtype=np.float32)
        if self.config.item_layers:  # the items' states cached, only the upper layers run
            prefix, items = split_pair_ids(
                self.tokenizer, user_text, item_texts, self.config.max_length, ITEM_TOKENS
            )
            states = self.item_states(item_texts, items)
            order = np.argsort([len(r) for r in items], kind="stable")
            chunks = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            state_batches = [
                (
                    self._pad([items[i] for i in idx], types=1),
                    _stack([states[i] for i in idx]),
                    feats[idx],
                )
                for idx in chunks
            ]
            for idx, logits in zip(
                chunks, self.core.state_logits(prefix, state_batches), strict=True
            ):
                out[idx] = logits
            return out
        if self.core.prefix_once:  # the user side once, then the item tokens alone
            prefix, items = split_pair_ids(
                self.tokenizer, user_text, item_texts, self.config.max_length
            )
            order = np.argsort([len(r) for r in items], kind="stable")
            chunks = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            batches = [(self._pad([items[i] for i in idx], types=1), feats[idx]) for idx in chunks]
            for idx, logits in zip(chunks, self.core.prefixed_logits(prefix, batches), strict=True):
                out[idx] = logits
            return out
        rows = self.encode_pairs(user_text, item_texts)
        order = np.argsort([len(r) for r in rows], kind="stable")  # group by length
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self.core.logits(self._pad([rows[i] for i in idx]), feats[idx])
        return out

    def item_states(
        self, item_texts: Sequence[str], rows: Sequence[list[int]] | None = None
    ) -> list[Floats]:
        """An item-layers model's states of each item (tokens, hidden), rounded to float16 as
        the cache keeps them (so a score never depends on whether they were cached): read from
        ``item_cache``, the misses computed and written back. ``rows``: the items' token ids
        when already split."""
        if not self.config.item_layers:
            raise ValueError(f"{self.folder} has no item layers")
        if rows is None:
            rows = split_pair_ids(
                self.tokenizer, "", item_texts, self.config.max_length, ITEM_TOKENS
            )[1]
        hidden = int(self.core.net.backbone.config.hidden_size)  # type: ignore[attr-defined]
        out: list[Floats | None] = [None] * len(item_texts)
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(i)
        if self.item_cache is not None:
            for length, members in by_length.items():
                found = self.item_cache.get_many(
                    self._states_key, [item_texts[i] for i in members], length * hidden
                )
                for i, flat in zip(members, found, strict=True):
                    if flat is not None:
                        out[i] = flat.reshape(length, hidden)
        missing = sorted((i for i, s in enumerate(out) if s is None), key=lambda i: len(rows[i]))
        for start in range(0, len(missing), self.batch_size):
            idx = missing[start : start + self.batch_size]
            computed = self.core.item_states(self._pad([rows[i] for i in idx], types=1))
            for i, states in zip(idx, computed, strict=True):
                out[i] = states[: len(rows[i])].astype(np.float16).astype(np.float32)
        if self.item_cache is not None and missing:
            fresh: dict[int, list[int]] = {}
            for i in missing:
                fresh.setdefault(len(rows[i]), []).append(i)
            for members in fresh.values():
                self.item_cache.put_many(
                    self._states_key,
                    [item_texts[i] for i in members],
                    np.stack([np.asarray(out[i]).ravel() for i in members]),
                )
        return [np.asarray(s) for s in out]

    def score(
        self, user_text: str, item_texts: Sequence[str], features: npt.ArrayLike | None = None
    ) -> Floats:
        """P(like) per pair (temperature-calibrated), in the given order."""
        return probability_np(self.logits(user_text, item_texts, features), self.config)

    def rerank(
        self,
        user_text: str,
        item_ids: Sequence[str],
        item_texts: Sequence[str],
        k: int,
        features: npt.ArrayLike | None = None,
    ) -> list[Scored]:
        """The ``k`` best candidates by probability (ties keep the incoming order)."""
        if len(item_ids) != len(item_texts):
            raise ValueError(f"{len(item_ids)} ids but {len(item_texts)} texts")
        probs = self.score(user_text, item_texts, features)
        order = np.argsort(-probs, kind="stable")[:k]
        return [Scored(item_ids[i], float(probs[i])) for i in order]

    def rerank_items(
        self,
        user_text: str,
        item_ids: Sequence[str],
        texts: Mapping[str, str],
        k: int,
        features: npt.ArrayLike | None = None,
    ) -> list[Scored]:
        """:meth:`rerank` with item texts looked up by id.

        Raises:
            KeyError: naming the first unknown item id.
        """
        missing = [i for i in item_ids if i not in texts]
        if missing:
            raise KeyError(
                f"unknown item id {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        return self.rerank(user_text, item_ids, [texts[i] for i in item_ids], k, features)

    def _features(self, features: npt.ArrayLike | None, n: int) -> Floats:
        width = len(self.config.features)
        if features is None:
            return np.zeros((n, width), dtype=np.float32)
        arr = (
            np.asarray(features, dtype=np.float32).reshape(n, -1)
            if n
            else np.zeros((0, width), np.float32)
        )
        if arr.shape != (n, width):
            raise ValueError(
                f"features must have shape ({n}, {width}) for "
                f"{list(self.config.features)}, got {arr.shape}"
            )
        return arr


def _stack(states: Sequence[Floats]) -> Floats:
    """Items' states (tokens, hidden) padded with zeros to one (items, tokens, hidden) array."""
    out = np.zeros((len(states), max(len(x) for x in states), states[0].shape[1]), np.float32)
    for i, x in enumerate(states):
        out[i, : len(x)] = x
    return out


def _states_key(folder: Path, config: RerankerConfig, backend: str) -> str:
    """The cache's fingerprint of a model's item states: its backbone's files (the
    embedding cache's own :func:`model_fingerprint`, memoised per process), its config (item
    layers, lengths), the backend that computes them (bf16 autocast differs from fp32) and the
    precision they are kept in."""
    import hashlib

    from retrieval.fingerprint import model_fingerprint

    digest = hashlib.sha256(model_fingerprint(folder / "backbone").encode())
    digest.update(repr((config.item_layers, config.max_length, backend, "float16")).encode())
    return f"items{config.item_layers}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class FeatureHead:
    """The logits of a head whose text weights are all zero: its text bias plus the feature
    head over the scalar features (absent: no features)."""

    bias: Floats
    weight: Floats | None = None
    feature_bias: Floats | None = None

    def logits(self, features: Floats) -> Floats:
        """(n, n_outputs) float32 logits of ``features`` (n, n_features)."""
        out = np.broadcast_to(self.bias, (len(features), len(self.bias))).astype(np.float32)
        if self.weight is not None and self.feature_bias is not None:
            out = out + (features.astype(np.float32) @ self.weight.T + self.feature_bias)
        return out.astype(np.float32)


def unweighted_text_head(folder: Path) -> FeatureHead | None:
    """The head of a saved reranker as a :class:`FeatureHead` when it gives the pooled text
    no weight (every text weight exactly 0), else None."""
    from safetensors.numpy import load_file

    head = load_file(str(folder / "head.safetensors"))
    if np.any(head["head.weight"] != 0):
        return None
    if "feature_head.weight" not in head:
        return FeatureHead(head["head.bias"].astype(np.float32))
    return FeatureHead(
        head["head.bias"].astype(np.float32),
        head["feature_head.weight"].astype(np.float32),
        head["feature_head.bias"].astype(np.float32),
    )
