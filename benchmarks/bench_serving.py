"""`duorank bench serving`: the HTTP service under 1, 4 and 16 concurrent clients.

Starts ``duorank serve`` as a separate process on 127.0.0.1 (so the load generator does not
share its interpreter), then each client thread sends ``POST /recommend`` (candidates=100, k=10)
for random ml-latest-small users, bounded in count and time. Reports p50/p95/p99 latency,
throughput, errors and 429s, and the per-stage split the server returns. The single-stream
ceiling is 1 / median rerank time measured in the same run at one client.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.contract import BenchContext, BenchReport, Target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _level(
    url: str, users: list[str], clients: int, requests: int, budget_s: float
) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    codes: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + budget_s
    rng = random.Random(clients)

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    if len(codes) >= requests:
                        return
                    user = rng.choice(users)
                    codes.append(-1)
                    slot = len(codes) - 1
                start = time.perf_counter()
                try:
                    r = client.post(
                        f"{url}/recommend", json={"user_id": user, "k": 10, "candidates": 100}
                    )
                    status = r.status_code
                    body = r.json() if status == 200 else {}
                except httpx.HTTPError:
                    status, body = 0, {}
                elapsed = time.perf_counter() - start
                with lock:
                    codes[slot] = status
                    if status == 200:
                        lat.append(elapsed)
                        for name, ms in body.get("timings_ms", {}).items():
                            stages.setdefault(name, []).append(ms / 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = len(lat)

    def pct(values: list[float], p: float) -> float:
        return float(np.percentile(values, p)) * 1000 if values else float("nan")

    return {
        "clients": clients,
        "requests": len(codes),
        "ok": ok,
        "errors": sum(1 for c in codes if c not in (200, 429)),
        "rejected_429": codes.count(429),
        "throughput_rps": ok / wall,
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        **{f"{name}_p50_ms": pct(v, 50) for name, v in stages.items()},
        **{f"{name}_p95_ms": pct(v, 95) for name, v in stages.items()},
        "rerank_median_s": statistics.median(stages["rerank"]) if stages.get("rerank") else None,
    }


def run(quick: bool, ctx: BenchContext | None = None) -> BenchReport:
    """Needs a dataset, index and reranker under the home (run the quickstart first)."""
    import httpx

    from catalog.store import load_catalog

    ctx = ctx or BenchContext()
    data = ctx.home / "datasets" / "ml-latest-small"
    reranker = ctx.home / "models" / "reranker"
    backend = "onnx-int8" if (reranker / "onnx" / "model-int8.onnx").is_file() else "torch"
    users = sorted(set(load_catalog(data).interactions.user_ids.tolist()))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("duorank")
    env = dict(os.environ)
    env.pop("DUORANK_API_TOKEN", None)
    cmd = [
        str(exe),
        "--home",
        str(ctx.home),
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
    ]
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
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
            raise RuntimeError("server did not become ready in 180 s")
        per_level = 30 if quick else 120
        budget = 60.0 if quick else 240.0
        rows = [_level(url, users, c, per_level, budget) for c in (1, 4, 16)]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    single = rows[0]
    ceiling = 1.0 / single["rerank_median_s"] if single["rerank_median_s"] else float("nan")
    for row in rows:
        row["throughput_vs_ceiling"] = row["throughput_rps"] / ceiling
    targets = [
        Target(
            "1 client: end-to-end p95 / rerank-stage p95",
            round(single["p95_ms"] / single["rerank_p95_ms"], 3),
            1.2,
            "<=",
        ),
        *[
            Target(
                f"{r['clients']} clients: throughput / single-stream ceiling",
                round(r["throughput_vs_ceiling"], 3),
                0.9,
            )
            for r in rows[1:]
        ],
        Target("errors at every level", sum(r["errors"] for r in rows), 0, "<="),
    ]
    return BenchReport(
        name="serving",
        params={
            "quick": quick,
            "backend": backend,
            "candidates": 100,
            "k": 10,
            "requests_per_level": per_level,
            "time_budget_s": budget,
            "max_in_flight": 1,
            "max_queue": 64,
            "single_stream_ceiling_rps": ceiling,
        },
        results={"levels": rows},
        targets=targets,
        table=[
            {k: v for k, v in r.items() if not k.startswith(("embed", "retrieve"))} for r in rows
        ],
    )
