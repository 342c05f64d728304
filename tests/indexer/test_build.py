"""Index builds: incremental encoding, atomic publish, crash safety, locking, verify, rollback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from catalog import Item, load_movielens
from duorank.cli import EXIT_LOCKED, EXIT_USAGE, EXIT_VERIFY, cli
from indexer import BuildConfig, BuildLock, IndexBuild, IndexRoot, LockHeldError, VerifyError
from retrieval.cache import EmbeddingCache
from retrieval.encoder import Encoder
from retrieval.redis_client import connect

pytestmark = pytest.mark.slow

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"


def _items(n: int = 30) -> dict[str, Item]:
    catalog = load_movielens(BUNDLED)
    return {k: catalog.items[k] for k in list(catalog.items)[:n]}


@pytest.fixture
def cached_encoder(redis_url: str, namespace: str) -> Encoder:
    return Encoder(device="cpu", cache=EmbeddingCache(connect(redis_url), namespace=namespace))


def _build(root: Path, encoder: Encoder, items: dict[str, Item], **cfg: object) -> dict:
    return IndexBuild(root, encoder, BuildConfig(**cfg)).run(  # type: ignore[arg-type]
        items, source={"test": True}, source_hash="x", progress=False
    )


def test_incremental_builds(tmp_path: Path, cached_encoder: Encoder) -> None:
    root = tmp_path / "root"
    items = _items()
    first = _build(root, cached_encoder, items)
    assert first["build"]["encoded"] == 30 and first["build"]["cache_hits"] == 0
    assert first["items"] == 30 and first["dims"] == 384
    assert IndexRoot(root).current() == first["version"]

    same = _build(root, cached_encoder, items)
    assert same["build"]["encoded"] == 0 and same["build"]["cache_hits"] == 30
    assert same["build"]["unchanged"] == 30

    changed = dict(items)
    first_id = next(iter(items))
    changed[first_id] = Item(first_id, items[first_id].title + " (Director's Cut)")
    removed_id = list(items)[1]
    del changed[removed_id]
    changed["new"] = Item("new", "A Brand New Film (2026)", genres=("Drama",))
    changed["empty"] = Item("empty", "   ")
    third = _build(root, cached_encoder, changed)
    b = third["build"]
    assert (b["encoded"], b["changed"], b["added"], b["removed"], b["skipped_empty"]) == (
        2,
        1,
        1,
        1,
        1,
    )
    index, manifest = IndexRoot(root).load()
    assert not index.has(removed_id) and index.has("new") and not index.has("empty")
    assert manifest["version"] == third["version"]
    assert manifest["text_template"]["fingerprint"] and manifest["model_fingerprint"]
    # keep=3 by default: all three versions remain
    assert len(IndexRoot(root).versions()) == 3


def test_retention_never_deletes_current(tmp_path: Path, cached_encoder: Encoder) -> None:
    root = tmp_path / "root"
    items = _items(5)
    versions = [_build(root, cached_encoder, items, keep=2)["version"] for _ in range(3)]
    store = IndexRoot(root)
    assert store.versions() == versions[1:]
    store.set_current(versions[1])  # roll back, then build again with keep=1
    last = _build(root, cached_encoder, items, keep=1)["version"]
    assert store.versions() == [last]


def test_corrupt_file_named_by_verify_and_refused_by_load(
    tmp_path: Path, cached_encoder: Encoder
) -> None:
    root = tmp_path / "root"
    version = _build(root, cached_encoder, _items(5))["version"]
    ids_file = root / "versions" / version / "ids.json"
    ids_file.write_text(ids_file.read_text().replace('"1"', '"999"'))
    with pytest.raises(VerifyError) as info:
        IndexRoot(root).load()
    assert any(str(ids_file) in p and "sha256 mismatch" in p for p in info.value.problems)
    result = CliRunner().invoke(cli, ["index", "verify", "--root", str(root)])
    assert result.exit_code == EXIT_VERIFY
    assert f"{ids_file}: sha256 mismatch" in result.output


def test_rollback(tmp_path: Path, cached_encoder: Encoder) -> None:
    root = tmp_path / "root"
    v1 = _build(root, cached_encoder, _items(5))["version"]
    v2 = _build(root, cached_encoder, _items(6))["version"]
    result = CliRunner().invoke(cli, ["index", "rollback", "--root", str(root)])
    assert result.exit_code == 0 and IndexRoot(root).current() == v1
    (root / "versions" / v2 / "index.faiss").write_bytes(b"junk")
    result = CliRunner().invoke(cli, ["index", "rollback", v2, "--root", str(root)])
    assert result.exit_code == EXIT_VERIFY and IndexRoot(root).current() == v1
    result = CliRunner().invoke(cli, ["index", "rollback", "nope", "--root", str(root)])
    assert result.exit_code == EXIT_USAGE
    listing = CliRunner().invoke(cli, ["index", "list", "--root", str(root), "--json"])
    rows = [json.loads(line) for line in listing.output.splitlines()]
    assert [r["current"] for r in rows] == [True, False]


def test_failure_leaves_current_untouched(tmp_path: Path, cached_encoder: Encoder) -> None:
    root = tmp_path / "root"
    v1 = _build(root, cached_encoder, _items(5))["version"]
    with pytest.raises(ValueError, match="nothing to index"):
        _build(root, cached_encoder, {"a": Item("a", "")})
    bad = IndexBuild(
        root, cached_encoder, BuildConfig(index_type="hnsw", index_params={"colour": 1})
    )
    with pytest.raises(ValueError, match="bad parameter"):
        bad.run(_items(5), source={}, source_hash="x", progress=False)
    store = IndexRoot(root)
    assert store.current() == v1 and store.versions() == [v1]
    assert list((root / "staging").iterdir()) == []
    store.verify(v1)


def test_a_second_build_exits_naming_the_holder(tmp_path: Path, cached_encoder: Encoder) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with BuildLock(root):
        with pytest.raises(LockHeldError, match=f"pid {os.getpid()} on"):
            _build(root, cached_encoder, _items(3))
        with pytest.raises(LockHeldError):
            _build(root, cached_encoder, _items(3), wait=True, lock_timeout=0.3)
    assert _build(root, cached_encoder, _items(3))["items"] == 3  # free again


def _cli_env(redis_url: str, ns: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DUORANK_REDIS_URL": redis_url,
            "DUORANK_CACHE_NAMESPACE": ns,
            "DUORANK_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def _items_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "items.jsonl"
    with path.open("w") as handle:
        for item in _items(n).values():
            handle.write(
                json.dumps({"item_id": item.id, "title": item.title, "genres": list(item.genres)})
                + "\n"
            )
    return path


def _duorank(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("duorank")
    return subprocess.Popen(
        [str(exe), "--log-level", "WARNING", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def cli_namespace(redis_url: str) -> Iterator[str]:
    ns = f"duorank-test:{uuid.uuid4().hex[:10]}"
    yield ns
    client = connect(redis_url)
    keys = list(client.scan_iter(f"{ns}:*", count=2000))
    for start in range(0, len(keys), 2000):
        client.delete(*keys[start : start + 2000])


def test_sigkill_mid_build_keeps_current(
    tmp_path: Path, redis_url: str, cli_namespace: str, cached_encoder: Encoder
) -> None:
    root = tmp_path / "root"
    v1 = _build(root, cached_encoder, _items(5))["version"]
    items = _items_file(tmp_path, 3000)  # cold cache: several seconds of encoding
    env = _cli_env(redis_url, cli_namespace, tmp_path / "home")
    proc = _duorank("index", "build", "--items", str(items), "--root", str(root), env=env)
    deadline = time.monotonic() + 180  # a busy 2-core machine imports torch slowly
    staging = root / "staging"
    while time.monotonic() < deadline and not (staging.is_dir() and any(staging.iterdir())):
        time.sleep(0.05)
    assert staging.is_dir() and any(staging.iterdir()), "the build never started staging"
    time.sleep(1.0)  # well inside the encoding phase
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    store = IndexRoot(root)
    assert store.current() == v1 and store.versions() == [v1]
    store.load()  # CURRENT still loads and verifies
    assert CliRunner().invoke(cli, ["index", "verify", "--root", str(root)]).exit_code == 0
    assert any(staging.iterdir())  # the leftover...
    _build(root, cached_encoder, _items(5))
    assert list(staging.iterdir()) == []  # ...is cleaned by the next build


def test_two_concurrent_cli_builds(tmp_path: Path, redis_url: str, cli_namespace: str) -> None:
    root = tmp_path / "root"
    items = _items_file(tmp_path, 2000)  # long enough that the others start while it runs
    env = _cli_env(redis_url, cli_namespace, tmp_path / "home")
    first = _duorank(
        "index", "build", "--items", str(items), "--root", str(root), "--json", env=env
    )
    while not (root / ".lock").exists() or not (root / ".lock").read_text():
        time.sleep(0.05)
    second = _duorank("index", "build", "--items", str(items), "--root", str(root), env=env)
    _, err = second.communicate(timeout=120)
    assert second.returncode == EXIT_LOCKED
    assert "another build holds" in err and "pid" in err
    waiting = _duorank(
        "index", "build", "--items", str(items), "--root", str(root), "--wait", "--json", env=env
    )
    out1, _ = first.communicate(timeout=300)
    out3, _ = waiting.communicate(timeout=300)
    assert first.returncode == 0 and waiting.returncode == 0
    s1, s3 = json.loads(out1.splitlines()[-1]), json.loads(out3.splitlines()[-1])
    assert s1["encoded"] == 2000 and s3["encoded"] == 0 and s3["cache_hits"] == 2000
    assert IndexRoot(root).versions() == sorted([s1["version"], s3["version"]])


def test_bad_catalog_input_publishes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    dup = tmp_path / "items.csv"
    dup.write_text("item_id,title\nA,x\nB,y\nA,z\n")
    result = CliRunner().invoke(cli, ["index", "build", "--items", str(dup), "--root", str(root)])
    assert result.exit_code == EXIT_USAGE
    assert "items.csv:4" in result.output and "first seen on line 2" in result.output
    result = CliRunner().invoke(
        cli, ["index", "build", "--items", str(tmp_path / "none.csv"), "--root", str(root)]
    )
    assert result.exit_code == EXIT_USAGE and "file not found" in result.output
    result = CliRunner().invoke(
        cli, ["index", "build", "--data", str(tmp_path / "nodata"), "--root", str(root)]
    )
    assert result.exit_code == EXIT_USAGE and "dataset folder not found" in result.output
    assert not (root / "CURRENT").exists()


def test_build_with_a_trained_tower(tmp_path: Path, redis_url: str, cli_namespace: str) -> None:
    from catalog import Catalog, save_catalog
    from retrieval.sequential import SequentialTower
    from tests.conftest import tiny_catalog

    catalog = tiny_catalog(n_items=30, n_users=10, per_user=8)
    assert isinstance(catalog, Catalog)
    save_catalog(catalog, tmp_path / "data")
    common = ["--home", str(tmp_path / "home"), "--redis-url", redis_url]
    env = {"DUORANK_CACHE_NAMESPACE": cli_namespace}
    result = CliRunner().invoke(
        cli,
        [
            *common,
            "train",
            "tower",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "tower"),
            "--dim",
            "16",
            "--quick",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "validation Recall@10" in result.output
    result = CliRunner().invoke(
        cli,
        [
            *common,
            "index",
            "build",
            "--data",
            str(tmp_path / "data"),
            "--root",
            str(tmp_path / "root"),
            "--tower",
            str(tmp_path / "tower"),
            "--json",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    index, manifest = IndexRoot(tmp_path / "root").load()
    tower = SequentialTower.load(tmp_path / "tower")
    assert tower.cfg.dim == 16 and len(index) == 30
    assert manifest["dims"] == tower.dim == 16 + (384 if tower.cfg.cold_blend > 0 else 0)
    assert manifest["transform_fingerprint"] and manifest["tower"]["name"] == "sequential"


@pytest.mark.parametrize(
    ("index_type", "params"),
    [("flat", {}), ("ivfpq", {"nlist": 1, "m": 8, "nbits": 4, "train_size": 20})],
)
def test_a_spilled_build_publishes_the_same_version(
    tmp_path: Path,
    cached_encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
    index_type: str,
    params: dict[str, int],
) -> None:
    """Past ``spill_items`` the vectors live in staging files and go to the index (and the
    transform) shard by shard: the published files are byte for byte the in-memory build's,
    and the spilled files are not among them."""
    import indexer.build as build_module
    import indexer.encoding as encoding_module
    from retrieval.index import VectorIndex

    items = _items(30)
    items = {**dict(list(items.items())[:12]), "empty": Item("empty", ""), **items}
    monkeypatch.setattr(build_module, "TRANSFORM_SHARD", 7)
    monkeypatch.setattr(VectorIndex, "add_shard", 8)
    spills: list[object] = []
    real_buffer = build_module.vector_buffer

    def buffer(rows: int, dim: int, spill: Path | None) -> np.ndarray:
        spills.append(spill and spill.name)
        return real_buffer(rows, dim, spill)

    monkeypatch.setattr(build_module, "vector_buffer", buffer)  # the transform's output
    monkeypatch.setattr(encoding_module, "vector_buffer", buffer)  # the encoded vectors

    def transform(ids: object, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors[:, :32] * 2.0, dtype=np.float32)

    manifests = {}
    for name, spill_items in (("memory", 1_000), ("spilled", 0)):
        config = BuildConfig(
            batch_size=8, index_type=index_type, index_params=params, spill_items=spill_items
        )
        build = IndexBuild(
            tmp_path / name, cached_encoder, config, transform=transform, transform_fingerprint="x2"
        )
        manifests[name] = build.run(items, source={"test": True}, source_hash="x", progress=False)
    assert spills == [None, *build_module.SPILL_FILES]  # in RAM, then both matrices on disk
    memory, spilled = manifests["memory"], manifests["spilled"]
    assert spilled["files"] == memory["files"]  # sha256 of every published file
    published = {p.name for p in (tmp_path / "spilled" / "versions").glob("*/*")}
    assert published == {*spilled["files"], "manifest.json"}
    assert not set(spilled["files"]) & set(build_module.SPILL_FILES)
    assert spilled["items"] == 30 and spilled["build"]["skipped_empty"] == 1
    index, _ = IndexRoot(tmp_path / "spilled").load()
    assert "empty" not in index.ids and len(index) == 30
