"""Batched point-wise scoring behind one interface, with interchangeable backends.

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

import functools
import importlib.util
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rerank.cross_encoder.model import ITEM_TOKENS, RerankerConfig, read_config, split_pair_ids

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")
AUTO = "auto"
"""Pick the fastest backend for this CPU and model folder (:func:`resolve_backend`)."""
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
PREFIX_FILES = {
    "onnx": ("user.onnx", "items.onnx"),
    "onnx-int8": ("user-int8.onnx", "items-int8.onnx"),
}
"""A ``user_prefix`` model's two graphs per ONNX backend: the user side, then the items."""
Floats = npt.NDArray[np.float32]


def probability_np(logits: npt.NDArray[np.floating], config: RerankerConfig) -> Floats:
    """Logits -> P(like) after the fitted temperature: the binary head's sigmoid, or the rating
    head's softmax mass on the levels at or above the like threshold."""
    z = np.asarray(logits, dtype=np.float64) / config.temperature
    if config.head == "binary":
        return (1.0 / (1.0 + np.exp(-z[:, 0]))).astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    like = np.array([v >= config.threshold for v in config.levels])
    out: Floats = p[:, like].sum(axis=1).astype(np.float32)
    return out


class Backend(ABC):
    """The core: padded token batch + features -> logits."""

    name: str
    prefix_once = False
    """Whether :meth:`prefixed_logits` computes a ``user_prefix`` model's user side once."""

    @abstractmethod
    def logits(self, batch: dict[str, npt.NDArray[np.int64]], features: Floats) -> Floats:
        """Raw logits, shape (batch, n_outputs)."""

    def prefixed_logits(
        self,
        prefix: list[int],
        batches: Sequence[tuple[dict[str, npt.NDArray[np.int64]], Floats]],
    ) -> list[Floats]:
        """Logits of item-side batches (``item [SEP]`` rows) after one user side."""
        raise NotImplementedError(f"{self.name} scores whole pairs")

    def item_states(self, batch: dict[str, npt.NDArray[np.int64]]) -> Floats:
        """An item-layers model's states of padded ``item [SEP]`` rows, (rows, tokens, hidden)."""
        raise NotImplementedError(f"{self.name} has no item layers: serve on torch")

    def state_logits(
        self,
        prefix: list[int],
        batches: Sequence[tuple[dict[str, npt.NDArray[np.int64]], Floats, Floats]],
    ) -> list[Floats]:
        """Logits of item batches given as (rows, their item states, features) after one user
        side: only the layers above the item layers run."""
        raise NotImplementedError(f"{self.name} has no item layers: serve on torch")


def native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes in bf16 natively (AVX512_BF16 or AMX); None where unknown.

    Without it torch emulates bf16 autocast, which is much slower than fp32 (the rerank
    benchmark measures both).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def exported(folder: str | Path, backend: str) -> bool:
    """Whether ``duorank rerank export`` wrote the graph an ONNX ``backend`` loads."""
    return (Path(folder) / "onnx" / ONNX_FILES[backend]).is_file()


def resolve_backend(folder: str | Path, backend: str = AUTO, cpuinfo: str | None = None) -> str:
    """``backend`` itself, or for ``auto`` the fastest on this machine: bf16 autocast where the
    CPU computes bf16 natively (AVX512_BF16 or AMX), else the exported int8 graphs when
    present and onnxruntime is installed, else torch fp32 (the order `bench rerank` measured:
    docs/results.md; emulated bf16 is slower than fp32)."""
    if backend != AUTO:
        return backend
    if native_bf16(cpuinfo):
        return "torch-bf16"
    if exported(folder, "onnx-int8") and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx-int8"
    return "torch"


class TorchBackend(Backend):
    """PyTorch, fp32 or bf16 autocast."""

    def __init__(self, folder: Path, bf16: bool = False) -> None:
        import torch

        from rerank.cross_encoder.model import load_net

        if bf16 and native_bf16() is False:
            logging.getLogger(__name__).warning(
                "torch-bf16: this CPU has no AVX512_BF16 or AMX, so bf16 is emulated and "
                "slower than fp32; use the torch or onnx-int8 backend here"
            )
        self.net, _, _ = load_net(folder)
        self.bf16 = bf16
        self.name = "torch-bf16" if bf16 else "torch"
        self.prefix_once = self.net.config.attention == "user_prefix"
        self._torch = torch

    def logits(self, batch: dict[str, npt.NDArray[np.int64]], features: Floats) -> Floats:
        torch = self._torch
        inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(features=torch.from_numpy(features), **inputs)
        logits: Floats = out.float().numpy()
        return logits

    def prefixed_logits(
        self,
        prefix: list[int],
        batches: Sequence[tuple[dict[str, npt.NDArray[np.int64]], Floats]],
    ) -> list[Floats]:
        return self._after_prefix(prefix, [(batch, None, feats) for batch, feats in batches])

    def item_states(self, batch: dict[str, npt.NDArray[np.int64]]) -> Floats:
        torch = self._torch
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            states = self.net.item_states(
                torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
            )
        out: Floats = states.float().numpy()
        return out

    def state_logits(
        self,
        prefix: list[int],
        batches: Sequence[tuple[dict[str, npt.NDArray[np.int64]], Floats, Floats]],
    ) -> list[Floats]:
        return self._after_prefix(prefix, batches)

    def _after_prefix(
        self,
        prefix: list[int],
        batches: Sequence[tuple[dict[str, npt.NDArray[np.int64]], Floats | None, Floats]],
    ) -> list[Floats]:
        """The user side once, then each batch of items (from their states when given)."""
        torch = self._torch
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            user = self.net.encode_prefix(torch.tensor([prefix], dtype=torch.long))
            return [
                self.net.prefixed(
                    user,
                    torch.from_numpy(batch["input_ids"]),
                    torch.from_numpy(batch["attention_mask"]),
                    torch.from_numpy(features),
                    None if states is None else torch.from_numpy(states),
                )
                .float()
                .numpy()
                for batch, states, features in batches
            ]


class OnnxBackend(Backend):
    """ONNX Runtime on an exported model file."""

    def __init__(
        self, folder: Path, kind: str, threads: int | None = None, spin: bool = False
    ) -> None:
        import onnxruntime as ort

        path = folder / "onnx" / ONNX_FILES[kind]
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `duorank rerank export` first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's threads busy-wait after each run by default; in a server they then
        # hold the cores the next request's torch user embedding needs (its p95 tail).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")

        def session(file: Path) -> Any:
            return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

        self._session = session
        self._path = path
        self.name = kind
        user, items = (path.with_name(name) for name in PREFIX_FILES[kind])
        # A user_prefix model's export also holds the user side and the item side as two
        # graphs; an export without them scores whole pairs (same numbers, more tokens).
        self.prefix_once = user.is_file() and items.is_file()
        if self.prefix_once:
            self._user, self._items = session(user), session(items)

    @functools.cached_property
    def session(self) -> Any:
        """The whole-pair graph, loaded on first use (a two-graph export never needs it)."""
        return self._session(self._path)

    @functools.cached_property
    def _inputs(self) -> set[str]:
        return {i.name for i in self.session.get_inputs()}

    def logits(self, batch: dict[str, npt.NDArray[np.int64]], features: Floats) -> Floats:
        feed: dict[str, Any] = {k: v for k, v in batch.items() if k in self._inputs}
        if "features" in self._inputs:
            feed["features"] = features
        out: Floats = self.session.run(["logits"], feed)[0]
        return out

    def prefixed_logits(
        self,
        prefix: list[int],
        batches: Sequence[tuple[dict[str, npt.NDArray[np.int64]], Floats]],
    ) -> list[Floats]:
        past, total = self._user.run(
            ["past", "total"], {"prefix_ids": np.array([prefix], dtype=np.int64)}
        )
        return [
            self._items.run(
                ["logits"],
                {
                    "input_ids": batch["input_ids"],
                    "attention_mask": batch["attention_mask"],
                    "past": past,
                    "total": total,
                    "features": features,
                },
            )[0]
            for batch, features in batches
        ]


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
        item_cache: Any | None = None,
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


def _head_nodes(path: Path) -> list[str]:
    """The graph nodes of the two output heads, kept in fp32 by the quantizer.

    Dynamic quantization also quantizes a node's input to 8 bits over its own range: for the
    feature head that is one scale across the retrieval score, popularity and mean ratings, so
    first-stage scores that differ by hundredths would collapse to the same step. The heads are
    a few hundred multiply-adds; the backbone is where int8 pays.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    heads = ("head.weight", "feature_head.weight")  # "net.head.weight" in a wrapper graph
    names = [
        n.name
        for n in graph.node
        if any(i == h or i.endswith("." + h) for i in n.input for h in heads)
    ]
    # The quantizer first rewrites a Gemm as MatMul + Add, the MatMul named ``<gemm>_MatMul``.
    return [*names, *(f"{name}_MatMul" for name in names)]


def export_onnx(folder: str | Path, *, quantize: bool = True, opset: int = 17) -> list[Path]:
    """Exports ``onnx/model.onnx`` (fp32) and ``onnx/model-int8.onnx`` (dynamic int8 weights,
    per output channel, onnxruntime's own quantizer) into a reranker folder; returns the
    written files.

    Raises:
        ValueError: the model has item layers (its item states come from the cache; it serves
            on the torch backends).
    """
    import torch

    from rerank.cross_encoder.model import load_net, read_config

    root = Path(folder)
    if read_config(root).item_layers:
        raise ValueError(
            f"{root} has item layers: its item states come from the cache and it serves on "
            "the torch backends (torch, torch-bf16); nothing to export"
        )
    net, tokenizer, config = load_net(root)
    out_dir = root / "onnx"
    out_dir.mkdir(exist_ok=True)
    enc = tokenizer(["a user text"], ["an item text"], return_tensors="pt")
    features = torch.zeros((1, len(config.features)), dtype=torch.float32)
    fp32 = out_dir / ONNX_FILES["onnx"]
    axes = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "token_type_ids": {0: "batch", 1: "seq"},
        "features": {0: "batch"},
        "logits": {0: "batch"},
    }
    with torch.no_grad():
        torch.onnx.export(
            net,
            (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], features),
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids", "features"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    written = [fp32]
    pairs = [(fp32, out_dir / ONNX_FILES["onnx-int8"])]
    if config.attention == "user_prefix":
        from rerank.cross_encoder.model import ItemSideGraph, UserSideGraph

        user_file, items_file = (out_dir / name for name in PREFIX_FILES["onnx"])
        prefix = torch.tensor([[tokenizer.cls_token_id, 2000, 2001, tokenizer.sep_token_id]])
        items = torch.tensor([[2002, 2003, tokenizer.sep_token_id], [2004, 0, 0]])
        item_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
        with torch.no_grad():
            past, total = UserSideGraph(net)(prefix)
            torch.onnx.export(
                UserSideGraph(net),
                (prefix,),
                str(user_file),
                input_names=["prefix_ids"],
                output_names=["past", "total"],
                dynamic_axes={"prefix_ids": {1: "prefix"}, "past": {4: "prefix"}},
                opset_version=opset,
                dynamo=False,
            )
            torch.onnx.export(
                ItemSideGraph(net),
                (items, item_mask, past, total, features.expand(2, -1)),
                str(items_file),
                input_names=["input_ids", "attention_mask", "past", "total", "features"],
                output_names=["logits"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "seq"},
                    "attention_mask": {0: "batch", 1: "seq"},
                    "past": {4: "prefix"},
                    "features": {0: "batch"},
                    "logits": {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )
        written += [user_file, items_file]
        pairs += [
            (user_file, out_dir / PREFIX_FILES["onnx-int8"][0]),
            (items_file, out_dir / PREFIX_FILES["onnx-int8"][1]),
        ]
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for source, int8 in pairs:
            # Per output channel: closer to fp32's ranking than per tensor, at the same speed.
            quantize_dynamic(
                str(source),
                str(int8),
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=_head_nodes(source),
            )
            written.append(int8)
    return written
