"""A tiny dataset, index and reranker, and a real uvicorn server on loopback (shared by the
serving and security suites; the session fixture ``stack`` lives in ``tests/conftest.py``)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from catalog import Catalog, ItemTextTemplate, leave_one_out, save_catalog
from indexer import BuildConfig, IndexBuild
from rerank import Reranker
from rerank.trainer import train_reranker
from rerank.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder
from retrieval.vectors import ItemVectors
from serving.http import ServerLimits, create_app
from serving.recommender import Recommender
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
    stack: Stack, *, token: str = "", limits: ServerLimits | None = None, backend: str = "torch"
) -> LiveServer:
    from indexer import IndexRoot

    IndexRoot(stack.root).set_current(stack.versions[0])
    recommender = Recommender(stack.root, stack.catalog, Reranker(stack.reranker, backend=backend))
    return LiveServer(create_app(recommender, token=token, limits=limits))
