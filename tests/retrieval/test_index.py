"""The FAISS index contract: every backend passes the same suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.index import VectorIndex, VectorIndexError, load_index, make_index

DIM = 16
N = 300


def _data(seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    return [f"item-{i}" for i in range(N)], x / np.linalg.norm(x, axis=1, keepdims=True)


BACKENDS = [
    ("flat", {}),
    ("hnsw", {"M": 16, "efSearch": 64}),
    ("ivfpq", {"nlist": 4, "m": 8, "nbits": 6, "nprobe": 4}),
]


@pytest.fixture(params=BACKENDS, ids=[b[0] for b in BACKENDS])
def index(request: pytest.FixtureRequest) -> VectorIndex:
    kind, params = request.param
    ids, x = _data()
    return make_index(kind, DIM, **params).build(ids, x)


def test_top1_of_an_item_is_itself(index: VectorIndex) -> None:
    ids, x = _data()
    result = index.search(x[:20], 5)
    assert result.positions.shape == (20, 5)
    hits = sum(result.ids[i][0] == ids[i] for i in range(20))
    assert hits >= (20 if index.kind != "ivfpq" else 14)
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()  # best first


def test_exclusion_still_returns_k(index: VectorIndex) -> None:
    _ids, x = _data()
    first = index.search(x[:1], 10).ids[0]
    result = index.search(x[:1], 10, exclude=[set(first)])
    assert len(result.ids[0]) == 10
    assert not set(result.ids[0]) & set(first)


def test_allow_list(index: VectorIndex) -> None:
    _ids, x = _data()
    allow = {"item-3", "item-7", "item-250", "unknown"}
    result = index.search(x[:2], 10, allow=allow, exclude=[{"item-7"}, set()])
    assert set(result.ids[0]) == {"item-3", "item-250"}
    assert set(result.ids[1]) == {"item-3", "item-7", "item-250"}
    assert result.positions[0, 2:].tolist() == [-1] * 8


def test_k_larger_than_index_empty_batch_all_excluded(index: VectorIndex) -> None:
    ids, x = _data()
    big = index.search(x[:1], N + 50)
    assert len(big.ids[0]) == N and big.positions.shape == (1, N + 50)
    assert np.isneginf(big.scores[0, N:]).all()
    empty = index.search(np.zeros((0, DIM), dtype=np.float32), 5)
    assert empty.positions.shape == (0, 5) and empty.ids == []
    everything = index.search(x[:1], 5, exclude=[set(ids)])
    assert everything.ids == [[]]


def test_stored_vectors_are_every_vector_and_an_exact_index_lends_its_own(
    index: VectorIndex, tmp_path: Path
) -> None:
    """A serving process binds its tower to the index's vectors: an exact index (flat, HNSW)
    hands a read-only view of its storage (no second copy), alive as long as the view is,
    even after the index object and a loaded copy are gone."""
    import gc

    index.save(tmp_path)
    loaded = load_index(tmp_path)
    expected = loaded.reconstruct(np.arange(len(loaded)))
    vectors = loaded.stored_vectors()
    np.testing.assert_array_equal(vectors, expected)
    if index.kind == "ivfpq":  # quantized codes: a decoded copy of its own
        assert vectors.flags.writeable
        return
    assert not vectors.flags.writeable and not vectors.flags.owndata
    assert vectors.base._owner is loaded.index  # the view holds the FAISS index
    with pytest.raises(ValueError, match="read-only"):
        vectors[0, 0] = 1.0
    del loaded
    gc.collect()
    np.testing.assert_array_equal(vectors, expected)  # still the index's memory, still alive


def test_save_load_round_trip(index: VectorIndex, tmp_path: Path) -> None:
    _ids, x = _data(1)
    before = index.search(x[:10], 20)
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    after = loaded.search(x[:10], 20)
    assert loaded.kind == index.kind and len(loaded) == N
    assert after.ids == before.ids
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-5)


def test_bad_input_is_named() -> None:
    ids, x = _data()
    with pytest.raises(VectorIndexError, match="duplicate id 'item-0' at rows 0 and 2"):
        make_index("flat", DIM).build(["item-0", "item-1", "item-0"], x[:3])
    with pytest.raises(VectorIndexError, match=r"shape \(n, 16\)"):
        make_index("flat", DIM).build(ids, x[:, :8])
    bad = x[:2].copy()
    bad[1, 0] = np.nan
    with pytest.raises(VectorIndexError, match="id 'b' has non-finite"):
        make_index("flat", DIM).build(["a", "b"], bad)
    with pytest.raises(VectorIndexError, match="unknown index type 'annoy'"):
        make_index("annoy", DIM)
    with pytest.raises(VectorIndexError, match="bad parameter"):
        make_index("hnsw", DIM, colour=1)
    ix = make_index("flat", DIM).build(ids, x)
    with pytest.raises(VectorIndexError, match="exclude has 2 entries for 1 queries"):
        ix.search(x[:1], 3, exclude=[set(), set()])
    with pytest.raises(KeyError, match="unknown item id 'zzz'"):
        ix.position("zzz")


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    ids, x = _data()
    make_index("flat", DIM).build(ids, x).save(tmp_path / "ix")
    (tmp_path / "ix" / "ids.json").write_text('["a"]')
    with pytest.raises(VectorIndexError, match=r"ids\.json has 1 ids"):
        load_index(tmp_path / "ix")
    (tmp_path / "ix" / "index.faiss").write_bytes(b"junk")
    with pytest.raises(VectorIndexError, match="unreadable FAISS index"):
        load_index(tmp_path / "ix")


@pytest.mark.parametrize(
    ("kind", "params"), [b for b in BACKENDS if b[0] != "hnsw"], ids=["flat", "ivfpq"]
)
def test_filled_shard_by_shard_from_a_memmap_equals_one_add(
    kind: str, params: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large build's spilled vectors are added a shard at a time: same bytes as one add."""
    import faiss

    ids, x = _data()
    monkeypatch.setattr(VectorIndex, "add_shard", 10 * N)
    whole = make_index(kind, DIM, **params).build(ids, x)
    spilled = np.lib.format.open_memmap(
        tmp_path / "vectors.npy", mode="w+", dtype=np.float32, shape=x.shape
    )
    spilled[:] = x
    monkeypatch.setattr(VectorIndex, "add_shard", 64)  # 5 shards
    sharded = make_index(kind, DIM, **params).build(ids, spilled)
    assert len(sharded) == N
    assert bytes(faiss.serialize_index(sharded.index)) == bytes(faiss.serialize_index(whole.index))
    spilled[N - 3, 0] = np.nan  # in the last shard: still found and named
    with pytest.raises(VectorIndexError, match=f"'item-{N - 3}' has non-finite"):
        make_index(kind, DIM, **params).build(ids, spilled)


def test_a_mapped_index_reads_its_vectors_from_the_file(index: VectorIndex, tmp_path: Path) -> None:
    """A published version's flat or HNSW index maps its vectors from index.faiss (one copy in
    the page cache for every worker) and answers as the copied one does; IVF-PQ is read."""
    index.save(tmp_path)
    copied, mapped = load_index(tmp_path), load_index(tmp_path, mmap=True)
    _, x = _data()
    a, b = copied.search(x[:10], 5), mapped.search(x[:10], 5)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(mapped.stored_vectors(), copied.stored_vectors())
    maps = Path("/proc/self/maps").read_text()
    assert (str(tmp_path / "index.faiss") in maps) == (index.kind in ("flat", "hnsw"))
