"""`duorank serve --workers 2` as a user runs it: two processes behind one port, /metrics summing
both whichever answers, a publish picked up by every worker, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from indexer import IndexRoot
from tests.live import Stack, free_port, wait_ready

pytestmark = pytest.mark.slow
TOKEN = "workers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_two_workers_share_the_port_the_metrics_and_each_publish(
    stack: Stack, tmp_path: Path
) -> None:
    IndexRoot(stack.root).set_current(stack.versions[0])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DUORANK_API_TOKEN": TOKEN, "DUORANK_LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    exe = Path(sys.executable).with_name("duorank")
    cmd = [
        *(str(exe), "--home", str(tmp_path / "home"), "serve", "--port", str(port)),
        *("--data", str(stack.data), "--root", str(stack.root), "--reranker", str(stack.reranker)),
        *("--no-ranker", "--backend", "torch", "--workers", "2", "--reload-interval", "0.2"),
        *("--max-queue", "64"),
    ]
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server, log)
        # every worker ready: one /readyz per worker is not addressable, so ask many times
        body = {"user_id": "u1", "k": 3, "second_stage": False}

        def client(_: int) -> list[int]:  # one kept-alive connection, eight calls
            with httpx.Client(headers=AUTH, timeout=60) as session:
                return [session.post(f"{url}/recommend", json=body).status_code for _ in range(8)]

        with ThreadPoolExecutor(15) as pool:
            codes = [code for codes in pool.map(client, range(15)) for code in codes]
        assert codes == [200] * 120
        metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
        served = re.findall(
            r'duorank_requests_total\{route="/recommend",status="200"\} (\S+)', metrics
        )
        assert served and float(served[0]) == 120.0  # summed over both workers
        per_worker = re.findall(r'duorank_worker_requests\{pid="(\d+)"\} (\S+)', metrics)
        assert len({pid for pid, _ in per_worker}) == 2, per_worker
        # both answered calls: the kernel spreads the 15 connections over the workers' sockets
        assert all(float(n) > 0 for _, n in per_worker), per_worker

        IndexRoot(stack.root).set_current(stack.versions[1])  # a publish: every worker swaps
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = {httpx.get(f"{url}/readyz").json()["index_version"] for _ in range(20)}
            if seen == {stack.versions[1]}:
                break
            time.sleep(0.3)
        assert seen == {stack.versions[1]}
        metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
        assert f'duorank_index_version_info{{version="{stack.versions[1]}"}} 1.0' in metrics
        assert f'duorank_index_version_info{{version="{stack.versions[0]}"}} 0.0' in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=60) == 0
        finally:
            server.kill()
            IndexRoot(stack.root).set_current(stack.versions[0])


def test_each_worker_gets_its_share_of_the_cores_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from duorank.cli.serve import threads_per_worker

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # the operator's choice stays
    assert threads_per_worker(2) == 4
    assert os.environ["OMP_NUM_THREADS"] == "4" and os.environ["OPENBLAS_NUM_THREADS"] == "4"
    assert os.environ["MKL_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads_per_worker(16) == 1 and os.environ["OMP_NUM_THREADS"] == "1"


def test_workers_share_a_port_only_among_themselves() -> None:
    """Each worker listens on its own SO_REUSEPORT socket; a port already held that way is
    still refused to a new server (the plain bind `serve --workers` tries first)."""
    import click

    from duorank.cli.serve import bind

    held = bind("127.0.0.1", 0, reuse_port=True)
    port = held.getsockname()[1]
    try:
        other = bind("127.0.0.1", port, reuse_port=True)  # another worker of the same server
        other.close()
        with pytest.raises(click.UsageError, match=f"port {port} is in use"):
            bind("127.0.0.1", port, listen=False)
    finally:
        held.close()
