"""The cross-encoder's inference backends (torch fp32, torch bf16 autocast, ONNX fp32 and
int8), and which one ``auto`` picks on this machine: each returns the same logits for the same
pairs (a test holds them equal)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rerank.cross_encoder.model import RerankerConfig

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
