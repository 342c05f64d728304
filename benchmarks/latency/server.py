"""A ``duorank serve`` process on a loopback port and the load levels the serving benches
drive through it (:mod:`benchmarks.bench_serving`, :mod:`benchmarks.bench_online_scale`)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency.loadgen import Outcome, drive
from catalog.progress import Progress

ASYNCIO = "asyncio"
"""The load generator every level uses (:mod:`benchmarks.latency.loadgen`)."""
HTTPX = "httpx threads"
"""The straightforward one, one level beside it (the figures of earlier runs used it)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def httpx_drive(
    url: str,
    users: list[str],
    clients: int,
    requests: int,
    budget_s: float,
    extra: dict[str, Any] | None,
    on_answer: Any,
) -> Outcome:
    """The straightforward generator, kept for comparison: one httpx client per thread."""
    import httpx

    out = Outcome()
    lock = threading.Lock()
    deadline = time.monotonic() + budget_s
    rng = random.Random(clients)

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    if len(out.codes) >= requests:
                        return
                    user = rng.choice(users)
                    out.codes.append(-1)
                    slot = len(out.codes) - 1
                start = time.perf_counter()
                try:
                    r = client.post(
                        f"{url}/recommend",
                        json={"user_id": user, "k": 10, "candidates": 100, **(extra or {})},
                    )
                    status = r.status_code
                    body = r.json() if status == 200 else {}
                except httpx.HTTPError:
                    status, body = 0, {}
                elapsed = time.perf_counter() - start
                with lock:
                    out.answered(slot, status, elapsed, body)
                    on_answer()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.wall_s = time.perf_counter() - started
    return out


def level(
    url: str,
    users: list[str],
    clients: int,
    requests: int,
    budget_s: float,
    extra: dict[str, Any] | None = None,
    generator: str = ASYNCIO,
) -> dict[str, Any]:
    bar = Progress(f"{clients} client(s)", requests, "requests")
    if generator == HTTPX:
        out = httpx_drive(url, users, clients, requests, budget_s, extra, bar.update)
    else:
        out = drive(url, users, clients, requests, budget_s, extra, bar.update)
    bar.close()
    lat, stages, codes = out.latencies, out.stages, out.codes

    def pct(values: list[float], p: float) -> float:
        return float(np.percentile(values, p)) * 1000 if values else float("nan")

    return {
        "clients": clients,
        "generator": generator,
        "requests": len(codes),
        "ok": len(lat),
        "errors": sum(1 for c in codes if c not in (200, 429)),
        "rejected_429": codes.count(429),
        "throughput_rps": len(lat) / out.wall_s,
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        **{f"{name}_p50_ms": pct(v, 50) for name, v in stages.items()},
        **{f"{name}_p95_ms": pct(v, 95) for name, v in stages.items()},
        "rerank_median_s": statistics.median(stages["rerank"]) if stages.get("rerank") else None,
    }


PASSES = 3
"""Passes of each 16-client level (the throughput targets' level): the host is shared and a
pass of 600 calls lasts seconds, so the row is the pass of median throughput."""


def busiest(
    url: str,
    users: list[str],
    requests: int,
    budget_s: float,
    passes: int,
    generator: str = ASYNCIO,
) -> dict[str, Any]:
    """The 16-client level ``passes`` times: the pass of median throughput, with every pass's
    throughput beside it."""
    runs = [level(url, users, 16, requests, budget_s, generator=generator) for _ in range(passes)]
    runs.sort(key=lambda r: r["throughput_rps"])
    return {
        **runs[len(runs) // 2],
        "throughput_passes": [round(r["throughput_rps"], 1) for r in runs],
        "errors_every_pass": sum(r["errors"] for r in runs),
    }


def rss_mb(root: int, field: str = "VmRSS") -> list[float]:
    """The resident memory (MB) of process ``root`` and each of its descendants (its worker
    processes), from /proc (empty where there is none); ``field`` another line of its status:
    ``RssAnon``, the memory no other process can share (file pages, such as a mapped index,
    are not in it)."""
    proc = Path("/proc")
    parents: dict[int, int] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we read
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    family, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    out = []
    for pid in sorted(family):
        try:
            status = (proc / str(pid) / "status").read_text()
        except OSError:
            continue
        kb = [line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:")]
        if kb:
            out.append(round(int(kb[0]) / 1024, 1))
    return out


def one_client(figures: dict[str, Any]) -> dict[str, float]:
    """A :func:`level` run at 1 client as a record's ``serve_*_ms_1`` fields: its p50 / p95 /
    p99 and where a call's time goes (the server's own timings per stage, p50)."""
    return {
        "serve_p50_ms_1": figures["p50_ms"],
        "serve_p95_ms_1": figures["p95_ms"],
        "serve_p99_ms_1": figures["p99_ms"],
        **{
            f"serve_{stage}_p50_ms_1": figures[f"{stage}_p50_ms"]
            for stage in ("embed", "candidates", "features", "rank")
            if f"{stage}_p50_ms" in figures
        },
    }


@contextlib.contextmanager
def serve_process(
    home: Path,
    backend: str,
    extra: list[str],
    env: dict[str, str] | None = None,
    ready_s: float = 180.0,
) -> Iterator[tuple[str, int]]:
    """``duorank serve`` on a free loopback port with ``extra`` flags; yields its URL and its
    process id once it answers ``/readyz`` (within ``ready_s``)."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("duorank")
    env = {**os.environ, **(env or {})}
    env.pop("DUORANK_API_TOKEN", None)
    cmd = [
        str(exe),
        "--home",
        str(home),
        "--log-level",
        "WARNING",
        "serve",
        "--port",
        str(port),
        "--backend",
        backend,
        "--max-in-flight",
        "1",
        "--max-queue",
        "64",
        *extra,
    ]
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(
                    f"server exited: {server.stderr.read() if server.stderr else ''}"
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"server did not become ready in {ready_s:.0f} s")
        yield url, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
