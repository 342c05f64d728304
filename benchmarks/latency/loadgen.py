"""A light HTTP load generator: ``clients`` kept-alive HTTP/1.1 connections on one asyncio
loop, each sending its next request as soon as the last answer is read.

`bench serving` runs the generator on the same two cores as the servers it measures, so what
the generator spends per request is taken from the servers. httpx in one thread per client
costs about a millisecond of CPU a request (its connection pool, header models, thread
switches under the GIL); this writes each request as bytes it formats itself and reads a
status line, the headers it needs and ``Content-Length`` bytes, a tenth of that. The bench
keeps one httpx level beside it, so the two can be compared in one run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Outcome:
    """Every request's status (0: no answer), and for each 200 its latency in seconds and the
    server's per-stage timings (``timings_ms``, in seconds)."""

    codes: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def answered(self, slot: int, status: int, elapsed: float, body: dict[str, Any]) -> None:
        """Request ``slot`` came back with ``status`` after ``elapsed`` seconds; a 200's
        ``body`` carries the server's ``timings_ms``."""
        self.codes[slot] = status
        if status == 200:
            self.latencies.append(elapsed)
            for name, ms in body.get("timings_ms", {}).items():
                self.stages.setdefault(name, []).append(ms / 1000)


def _request(host: str, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response's status and body (``Content-Length`` framing: what uvicorn sends)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, await reader.readexactly(length) if length else b""


async def _run(
    url: str,
    bodies: Callable[[random.Random], dict[str, Any]],
    clients: int,
    requests: int,
    budget_s: float,
    seed: int,
    on_answer: Callable[[], None] | None,
) -> Outcome:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    rng = random.Random(seed)
    out = Outcome()
    deadline = time.monotonic() + budget_s

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < deadline and len(out.codes) < requests:
                out.codes.append(0)
                slot = len(out.codes) - 1
                message = _request(f"{host}:{port}", "/recommend", bodies(rng))
                start = time.perf_counter()
                writer.write(message)
                status, body = await _read_response(reader)
                elapsed = time.perf_counter() - start
                out.answered(slot, status, elapsed, json.loads(body) if status == 200 else {})
                if on_answer is not None:
                    on_answer()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass  # the slot keeps its 0: an error
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    out.wall_s = time.perf_counter() - started
    return out


def drive(
    url: str,
    users: Sequence[str],
    clients: int,
    requests: int,
    budget_s: float,
    extra: dict[str, Any] | None = None,
    on_answer: Callable[[], None] | None = None,
) -> Outcome:
    """``POST /recommend`` (k=10, candidates=100, ``extra``) for random ``users`` from
    ``clients`` connections until ``requests`` were sent or ``budget_s`` ran out."""

    def body(rng: random.Random) -> dict[str, Any]:
        return {"user_id": rng.choice(users), "k": 10, "candidates": 100, **(extra or {})}

    return asyncio.run(_run(url, body, clients, requests, budget_s, clients, on_answer))
