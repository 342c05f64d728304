"""Encoding a catalog's items for an index build: one batch (:func:`encode_items`: render,
skip the empty, encode through the cache), the engine interface and the in-process engine
(:class:`LocalEngine`; Ray's is :mod:`indexer.ray_engine`), and the vector buffers they fill
(in RAM, or spilled to a memory-mapped file past ``spill_items``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from catalog.model import Item
from catalog.progress import Progress
from catalog.text import ItemTextTemplate
from retrieval.encoder import Encoder

log = logging.getLogger(__name__)


Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EncodedBatch:
    """What :func:`encode_items` returns for one batch."""

    ids: list[str]
    texts: list[str]
    vectors: Matrix
    skipped_empty: list[str]


def encode_items(
    batch: Sequence[Item], template: ItemTextTemplate, encode: Callable[[Sequence[str]], Matrix]
) -> EncodedBatch:
    """Renders and encodes one batch of items; items whose text is empty are skipped.

    A pure function of its inputs (``encode`` aside, which is deterministic for a fixed model),
    so a distributed engine can map it over partitions of the catalog unchanged.
    """
    ids, texts, skipped = [], [], []
    for item in batch:
        text = template.render(item)
        if text:
            ids.append(item.id)
            texts.append(text)
        else:
            skipped.append(item.id)
    vectors = encode(texts) if texts else np.zeros((0, 0), dtype=np.float32)
    return EncodedBatch(ids, texts, vectors, skipped)


@dataclass(frozen=True)
class Encoded:
    """Every item's text vector, in catalog order, and what it cost."""

    ids: list[str]
    texts: list[str]
    vectors: Matrix
    skipped_empty: list[str]
    encoded: int  # texts the model ran on (cache misses)
    cache_hits: int


class EncodeEngine(Protocol):
    """Where a build's encoding step runs; what follows it is the same for every engine."""

    name: str

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
        """Every item's text vector in ``items`` order, through ``encoder``'s cache (with
        ``refresh``, for a cache the audit found untrustworthy: read nothing from it,
        encode everything and overwrite its entries). With ``spill``, the vectors are
        written batch by batch into that file (:func:`vector_buffer`) instead of RAM."""
        ...


def vector_buffer(rows: int, dim: int, spill: Path | None) -> Matrix:
    """An empty ``(rows, dim)`` float32 matrix: in RAM, or with ``spill`` a file-backed
    ``np.memmap`` (``.npy`` format), so a large catalog's vectors never sit in memory at once."""
    if spill is None:
        return np.zeros((rows, dim), np.float32)
    spill.parent.mkdir(parents=True, exist_ok=True)
    out: Matrix = np.lib.format.open_memmap(spill, mode="w+", dtype=np.float32, shape=(rows, dim))
    return out


def compact_rows(matrix: Matrix, keep: npt.NDArray[np.bool_], shard: int = 65_536) -> Matrix:
    """``matrix[keep]`` computed in place, shard by shard (kept rows only move up), so a
    memmap is never copied whole; returns the leading view."""
    kept = np.flatnonzero(keep)
    for start in range(0, len(kept), shard):
        rows = kept[start : start + shard]
        matrix[start : start + len(rows)] = matrix[rows]
    return matrix[: len(kept)]


class LocalEngine:
    """The encoding step in this process, batch after batch (the default)."""

    name = "local"

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
        encode = functools.partial(encoder.encode, refresh=refresh)

        cache = encoder.cache
        hits_before = cache.stats.hits if cache else 0
        encoded_before = encoder.encoded
        ids: list[str] = []
        texts: list[str] = []
        skipped: list[str] = []
        vectors = vector_buffer(len(items), encoder.dim, spill)
        with Progress("encoding items", len(items), "items", enabled=progress) as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                out = encode_items(batch, template, encode)
                if len(out.ids):
                    vectors[len(ids) : len(ids) + len(out.ids)] = out.vectors
                ids += out.ids
                texts += out.texts
                skipped += out.skipped_empty
                bar.update(len(batch))
        return Encoded(
            ids,
            texts,
            vectors[: len(ids)],
            skipped,
            encoder.encoded - encoded_before,
            (cache.stats.hits - hits_before) if cache else 0,
        )
