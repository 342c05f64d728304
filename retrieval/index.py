"""FAISS vector indexes over unit vectors (inner product = cosine).

One interface, three backends: ``flat`` (exact, the default), ``hnsw`` (graph, fast at millions)
and ``ivfpq`` (compressed, trained on a sample). String item ids map to positions 0..n-1; the
index stores vectors in that order. Searches exclude each user's seen items and still return K
results (they over-fetch and retry), and accept an allow-list of ids.

Saved form: ``index.faiss`` (FAISS's own format), ``ids.json`` and ``index.json`` (kind, dim,
parameters, count). Never pickle.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from retrieval.vectors import ItemVectors

Matrix = npt.NDArray[np.float32]
faiss: Any = _faiss  # the SWIG stubs miss most of the API (SearchParametersHNSW, sel=...)


@dataclass(frozen=True)
class SearchResult:
    """Top-K per query: positions (-1 = no result), scores (-inf = none) and their ids."""

    positions: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    ids: list[list[str]]


class _Owned:
    """An array interface that holds the object owning the memory (a FAISS index), so a
    NumPy view of that memory never outlives it."""

    def __init__(self, array: npt.NDArray[Any], owner: Any) -> None:
        self.__array_interface__ = array.__array_interface__
        self._owner = owner


class VectorIndexError(ValueError):
    """A bad index argument or a broken index file (the message names it)."""


class VectorIndex(ABC):
    """An inner-product index over unit vectors with string ids."""

    kind: ClassVar[str]
    exact_allow_limit: ClassVar[int] = 20_000
    """Allow-lists up to this size are scored exactly over their own vectors."""
    exact_fallback_limit: ClassVar[int] = 200_000
    """Up to this size, a query that an approximate index answers short is answered exactly."""
    add_shard: ClassVar[int] = 65_536
    """Rows checked and (where :attr:`shard_adds`) added per step of :meth:`build`."""
    shard_adds: ClassVar[bool] = True
    """Whether :meth:`build` adds shard by shard: each vector's entry depends on that vector
    alone (flat, IVF-PQ), so the index is byte-identical to one ``add`` of every vector."""

    def __init__(self, dim: int, **params: Any) -> None:
        if dim < 1:
            raise VectorIndexError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.params = params
        self.ids: list[str] = []
        self._pos: dict[str, int] = {}
        self.index: Any = None

    # ------------------------------------------------------------------ building
    @abstractmethod
    def _create(self, vectors: Matrix) -> Any:
        """Creates (and trains, if needed) the FAISS index for these vectors."""

    def build(self, ids: Sequence[str], vectors: npt.ArrayLike) -> VectorIndex:
        """Builds the index from scratch.

        ``vectors`` may be a file-backed ``np.memmap`` (a large build's spilled vectors): it is
        checked and added :attr:`add_shard` rows at a time, so nothing holds a second copy of
        the whole matrix.

        Raises:
            VectorIndexError: duplicate ids, a count mismatch, a wrong dimension or non-finite
                values.
        """
        mat = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, np.float32)
        if mat.ndim != 2 or mat.shape[1] != self.dim:
            raise VectorIndexError(f"vectors must have shape (n, {self.dim}), got {mat.shape}")
        if len(ids) != len(mat):
            raise VectorIndexError(f"{len(ids)} ids but {len(mat)} vectors")
        shard = max(1, self.add_shard)
        for start in range(0, len(mat), shard):
            finite = np.isfinite(mat[start : start + shard]).all(axis=1)
            if not finite.all():
                bad = start + int(np.flatnonzero(~finite)[0])
                raise VectorIndexError(f"vector for id {ids[bad]!r} has non-finite values")
        pos: dict[str, int] = {}
        for i, item_id in enumerate(ids):
            if item_id in pos:
                raise VectorIndexError(f"duplicate id {item_id!r} at rows {pos[item_id]} and {i}")
            pos[item_id] = i
        self.ids, self._pos = list(ids), pos
        self.index = self._create(mat)
        if self.shard_adds:
            for start in range(0, len(mat), shard):
                self.index.add(np.ascontiguousarray(mat[start : start + shard], np.float32))
        elif len(mat):
            self.index.add(np.ascontiguousarray(mat, np.float32))
        return self

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, item_id: str) -> int:
        """The position of an id.

        Raises:
            KeyError: naming the unknown id.
        """
        try:
            return self._pos[item_id]
        except KeyError:
            raise KeyError(f"unknown item id {item_id!r}") from None

    def has(self, item_id: str) -> bool:
        """Whether the id is in the index."""
        return item_id in self._pos

    def reconstruct(self, positions: npt.ArrayLike) -> Matrix:
        """Stored vectors at positions (exact for flat/hnsw, approximate for ivfpq)."""
        pos = np.asarray(positions, dtype=np.int64)
        if len(pos) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.reconstruct_batch(pos), dtype=np.float32)

    def stored_vectors(self) -> Matrix:
        """Every stored vector, in position order (what :meth:`reconstruct` gives for all);
        an exact index answers with a read-only view of its own storage instead of a copy
        (:meth:`_storage`), so a serving process holds the vectors once."""
        flat = self._storage()
        if flat is None or len(self) == 0:
            return self.reconstruct(np.arange(len(self)))
        raw = faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(len(self), self.dim)
        view: Matrix = np.asarray(_Owned(raw, self.index))  # the view keeps the index alive
        view.flags.writeable = False
        return view

    def _storage(self) -> Any:
        """The ``IndexFlat`` holding the exact vectors, where this index keeps them."""
        return None

    def item_vectors(self) -> ItemVectors:
        """:meth:`stored_vectors` by id, sharing this index's ids and id-to-row map."""
        return ItemVectors.sharing(self.ids, self.stored_vectors(), self._pos)

    # ------------------------------------------------------------------ searching
    def _search_params(self, selector: Any) -> Any:
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _raw_search(self, queries: Matrix, k: int, selector: Any) -> tuple[Any, Any]:
        params = self._search_params(selector)
        if params is None:
            d, p = self.index.search(queries, k)
        else:
            d, p = self.index.search(queries, k, params=params)
        return d, p

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        exclude: Sequence[Collection[str]] | None = None,
        allow: Collection[str] | None = None,
    ) -> SearchResult:
        """Top-``k`` items per query by inner product.

        Args:
            queries: (n, dim) unit vectors.
            k: results per query; fewer only when fewer items qualify.
            exclude: per query, ids to leave out (such as items the user has seen).
            allow: only these ids may be returned (unknown ids are ignored).

        Raises:
            VectorIndexError: a wrong query shape, k < 1, or an ``exclude`` of the wrong length.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1 and q.size == self.dim:
            q = q[None, :]
        if q.ndim != 2 or (q.shape[0] and q.shape[1] != self.dim):
            raise VectorIndexError(f"queries must have shape (n, {self.dim}), got {q.shape}")
        if k < 1:
            raise VectorIndexError(f"k must be >= 1, got {k}")
        n = q.shape[0]
        if exclude is not None and len(exclude) != n:
            raise VectorIndexError(f"exclude has {len(exclude)} entries for {n} queries")
        positions = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if n == 0 or len(self) == 0:
            return SearchResult(positions, scores, [[] for _ in range(n)])
        selector = None
        allowed = np.zeros(0, dtype=np.int64)
        allowed_count = len(self)
        if allow is not None:
            allowed = np.array(
                sorted({self._pos[a] for a in allow if a in self._pos}), dtype=np.int64
            )
            allowed_count = len(allowed)
            if allowed_count == 0:
                return SearchResult(positions, scores, [[] for _ in range(n)])
            if allowed_count <= self.exact_allow_limit:
                return self._search_subset(q, k, allowed, exclude)
            selector = faiss.IDSelectorBatch(allowed)
        excl_pos = [
            {self._pos[e] for e in ex if e in self._pos} if ex else set()
            for ex in (exclude or [()] * n)
        ]
        allowed_set = set(allowed.tolist()) if allow is not None else None
        # How many results each query can have at most, so the retry loop knows when to stop.
        possible = [
            allowed_count - len(e if allowed_set is None else e & allowed_set) for e in excl_pos
        ]
        fetch = min(allowed_count, k + max((len(e) for e in excl_pos), default=0))
        pending = np.arange(n)
        short: list[int] = []
        while len(pending):
            d, p = self._raw_search(q[pending], fetch, selector)
            still: list[int] = []
            for row, qi in enumerate(pending):
                excluded = excl_pos[qi]
                keep = [
                    (pp, dd)
                    for pp, dd in zip(p[row], d[row], strict=True)
                    if pp >= 0 and pp not in excluded
                ][:k]
                if len(keep) < min(k, possible[qi]):
                    if fetch < allowed_count:
                        still.append(int(qi))  # approximate search came back short: fetch more
                        continue
                    short.append(int(qi))
                if keep:
                    positions[qi, : len(keep)] = [pp for pp, _ in keep]
                    scores[qi, : len(keep)] = [dd for _, dd in keep]
            pending = np.array(still, dtype=np.int64)
            fetch = min(allowed_count, fetch * 2)
        if short and allowed_count <= self.exact_fallback_limit:
            # A graph index cannot always reach every node; K near the catalog size gets an
            # exact answer instead of a short one.
            every = allowed if allow is not None else np.arange(len(self), dtype=np.int64)
            sub = self._search_subset(
                q[short], k, every, [exclude[i] for i in short] if exclude else None
            )
            positions[short], scores[short] = sub.positions, sub.scores
        ids = [[self.ids[p] for p in row if p >= 0] for row in positions]
        return SearchResult(positions, scores, ids)

    def _search_subset(
        self,
        q: Matrix,
        k: int,
        allowed: npt.NDArray[np.int64],
        exclude: Sequence[Collection[str]] | None,
    ) -> SearchResult:
        """Exact scoring of a small allow-list: complete results even for graph indexes, whose
        filtered search can stop short when few nodes pass the filter."""
        vectors = self.reconstruct(allowed)
        sims = q @ vectors.T
        for qi, ex in enumerate(exclude or ()):
            if ex:
                mask = np.isin(allowed, [self._pos[e] for e in ex if e in self._pos])
                sims[qi, mask] = -np.inf
        kk = min(k, len(allowed))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        positions = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        top = np.take_along_axis(sims, order, axis=1)
        valid = np.isfinite(top)
        positions[:, :kk] = np.where(valid, allowed[order], -1)
        scores[:, :kk] = np.where(valid, top, -np.inf)
        ids = [[self.ids[p] for p in row if p >= 0] for row in positions]
        return SearchResult(positions, scores, ids)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> list[Path]:
        """Writes ``index.faiss``, ``ids.json`` and ``index.json``; returns the paths."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(root / "index.faiss"))
        (root / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False))
        meta = {
            "kind": self.kind,
            "dim": self.dim,
            "params": self.params,
            "count": len(self),
            "metric": "inner_product",
        }
        (root / "index.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return [root / "index.faiss", root / "ids.json", root / "index.json"]

    def describe(self) -> dict[str, Any]:
        """Kind, dim, parameters and count, for manifests."""
        return {
            "kind": self.kind,
            "dim": self.dim,
            "params": self.params,
            "count": len(self),
            "metric": "inner_product",
        }


class FlatIndex(VectorIndex):
    """Exact search (``IndexFlatIP``): the default, and the reference for recall."""

    kind = "flat"

    def _create(self, vectors: Matrix) -> Any:
        return faiss.IndexFlatIP(self.dim)

    def _storage(self) -> Any:
        return self.index


class HNSWIndex(VectorIndex):
    """HNSW graph (``IndexHNSWFlat``, inner product).

    Params: ``M`` (links per node, default 32), ``efConstruction`` (default 200), ``efSearch``
    (default 128; raise for recall, lower for speed).
    """

    kind = "hnsw"
    shard_adds = False  # the graph depends on insertion batches: one add, as FAISS intends

    def __init__(
        self,
        dim: int,
        M: int = 32,  # noqa: N803 (FAISS's own parameter names)
        efConstruction: int = 200,  # noqa: N803
        efSearch: int = 128,  # noqa: N803
    ) -> None:
        super().__init__(dim, M=M, efConstruction=efConstruction, efSearch=efSearch)

    def _create(self, vectors: Matrix) -> Any:
        index = faiss.IndexHNSWFlat(self.dim, int(self.params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.params["efConstruction"])
        index.hnsw.efSearch = int(self.params["efSearch"])
        return index

    def _storage(self) -> Any:
        return faiss.downcast_index(self.index.storage)

    def _search_params(self, selector: Any) -> Any:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.params["efSearch"]))


class IVFPQIndex(VectorIndex):
    """Inverted lists with product quantization (``IndexIVFPQ``, inner product).

    Params: ``nlist`` (lists; default ~4*sqrt(n), at most n/39), ``m`` (sub-quantizers, must
    divide dim; default 48 for 384-d), ``nbits`` (default 8), ``nprobe`` (default 16),
    ``train_size`` (vectors sampled for training, default 100k), ``seed``.
    """

    kind = "ivfpq"

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,
        m: int | None = None,
        nbits: int = 8,
        nprobe: int = 16,
        train_size: int = 100_000,
        seed: int = 0,
    ) -> None:
        if m is None:
            m = next(c for c in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dim % c == 0)
        if dim % m:
            raise VectorIndexError(f"ivfpq m={m} must divide dim={dim}")
        super().__init__(
            dim, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, train_size=train_size, seed=seed
        )

    def _create(self, vectors: Matrix) -> Any:
        n = len(vectors)
        nbits = int(self.params["nbits"])
        if n < 2**nbits:
            raise VectorIndexError(
                f"ivfpq needs at least {2**nbits} vectors to train nbits={nbits}, "
                f"got {n}; use flat or hnsw for small catalogs"
            )
        nlist = self.params["nlist"] or int(min(max(1, 4 * np.sqrt(n)), max(1, n // 39)))
        self.params["nlist"] = int(nlist)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(
            quantizer,
            self.dim,
            int(nlist),
            int(self.params["m"]),
            nbits,
            faiss.METRIC_INNER_PRODUCT,
        )
        rng = np.random.default_rng(int(self.params["seed"]))
        size = min(n, int(self.params["train_size"]))
        # A seeded sample of rows (read from a memmap without loading the rest): the codebooks
        # are trained once, then :meth:`build` fills the lists shard by shard.
        sample = vectors[np.sort(rng.choice(n, size=size, replace=False))] if size < n else vectors
        index.train(np.ascontiguousarray(sample, np.float32))
        index.nprobe = int(self.params["nprobe"])
        index.make_direct_map()  # enables reconstruct() of stored (quantized) vectors
        return index

    def _search_params(self, selector: Any) -> Any:
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(self.params["nprobe"]))


BACKENDS: dict[str, type[VectorIndex]] = {c.kind: c for c in (FlatIndex, HNSWIndex, IVFPQIndex)}


def make_index(kind: str, dim: int, **params: Any) -> VectorIndex:
    """The factory: ``make_index("hnsw", 384, M=32)``.

    Raises:
        VectorIndexError: an unknown kind or parameter (the message lists the valid ones).
    """
    if kind not in BACKENDS:
        raise VectorIndexError(f"unknown index type {kind!r}; choose from {', '.join(BACKENDS)}")
    try:
        return BACKENDS[kind](dim, **params)
    except TypeError as exc:
        raise VectorIndexError(f"bad parameter for {kind} index: {exc}") from None


MAPPABLE = ("flat", "hnsw")
"""Kinds whose stored vectors FAISS can map from the file (``IO_FLAG_MMAP_IFC``)."""


def load_index(folder: str | Path, *, mmap: bool = False) -> VectorIndex:
    """Loads an index saved by :meth:`VectorIndex.save`.

    With ``mmap`` (a published version, whose files never change), a flat or HNSW index reads
    its vectors from the file's pages instead of copying them into the process: every serving
    worker on a host shares one copy in the page cache (the index must not be added to).

    Raises:
        VectorIndexError: a missing or inconsistent file (named in the message).
    """
    root = Path(folder)
    for name in ("index.faiss", "ids.json", "index.json"):
        if not (root / name).is_file():
            raise VectorIndexError(f"{root / name}: missing")
    try:
        meta = json.loads((root / "index.json").read_text())
        ids = json.loads((root / "ids.json").read_text())
    except json.JSONDecodeError as exc:
        raise VectorIndexError(f"{root}: invalid JSON: {exc}") from None
    kind = meta.get("kind")
    if kind not in BACKENDS:
        raise VectorIndexError(f"{root / 'index.json'}: unknown kind {kind!r}")
    try:
        flags = faiss.IO_FLAG_MMAP_IFC if mmap and kind in MAPPABLE else 0
        raw = faiss.read_index(str(root / "index.faiss"), flags)
    except RuntimeError as exc:
        raise VectorIndexError(f"{root / 'index.faiss'}: unreadable FAISS index: {exc}") from None
    if raw.d != meta["dim"] or raw.ntotal != len(ids) or meta.get("count") != len(ids):
        raise VectorIndexError(
            f"{root}: index.faiss holds {raw.ntotal} vectors of dim {raw.d}, "
            f"index.json says {meta.get('count')} of dim {meta['dim']}, "
            f"ids.json has {len(ids)} ids"
        )
    obj = BACKENDS[kind].__new__(BACKENDS[kind])
    VectorIndex.__init__(obj, int(meta["dim"]), **meta.get("params", {}))
    obj.ids = list(ids)
    obj._pos = {i: p for p, i in enumerate(obj.ids)}
    if len(obj._pos) != len(obj.ids):
        raise VectorIndexError(f"{root / 'ids.json'}: duplicate ids")
    if kind == "ivfpq":
        raw.make_direct_map()
    obj.index = raw
    return obj
