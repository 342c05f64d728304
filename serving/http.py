"""The HTTP API (FastAPI): /recommend, /score, /healthz, /readyz, /metrics and OpenAPI docs.

Model inference runs in worker threads, never on the event loop, behind a bounded admission
gate: when ``max_in_flight`` calls are running and ``max_queue`` more are waiting, a new call is
refused at once with 429 (a fast answer beats an unbounded queue). Request bodies over
``max_body_bytes`` get 413, invalid fields 422 naming the field. With a token configured, every
route but the probes (/healthz, /readyz) needs ``Authorization: Bearer <token>`` (compared in
constant time).
A background thread polls the index root's CURRENT and hot-swaps verified new versions.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from catalog.text import HistoryEvent
from serving.recommender import Recommender

log = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/healthz", "/readyz"})
"""Probes answer without the token (orchestrators' health checks carry none)."""


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """Bounds on requests and concurrency."""

    max_k: int = 100
    max_candidates: int = 1000
    max_history: int = 1000
    max_items: int = 1000
    max_body_bytes: int = 1 << 20
    max_in_flight: int = 2
    max_queue: int = 8
    reload_interval_s: float = 5.0


class Event(BaseModel):
    """A past interaction sent with the request (for users the server has not seen)."""

    item_id: str = Field(min_length=1, max_length=200)
    timestamp: int = 0
    rating: float | None = None
    label: int | None = Field(default=None, ge=0, le=1)


class RecommendRequest(BaseModel):
    """Who to recommend for (a known user id, or a history and profile) and how many."""

    user_id: str | None = Field(default=None, max_length=200)
    history: list[Event] | None = None
    profile: dict[str, str] | None = None
    k: int = Field(default=10, ge=1)
    candidates: int = Field(default=100, ge=1)
    exclude_seen: bool = True
    allow: list[str] | None = None


class ScoreRequest(BaseModel):
    """Point-wise scores of given items for a user."""

    user_id: str | None = Field(default=None, max_length=200)
    history: list[Event] | None = None
    profile: dict[str, str] | None = None
    item_ids: list[str] = Field(min_length=1)


class _Gate:
    """Admission control: at most ``in_flight`` running and ``queue`` waiting, else refuse."""

    def __init__(self, in_flight: int, queue: int) -> None:
        self.running = anyio.Semaphore(in_flight)
        self.capacity = in_flight + queue
        self.admitted = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1


class _CacheCollector(Collector):
    """The user encoder's embedding-cache counters, read at scrape time (none without one)."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    def collect(self) -> Iterator[Metric]:
        stats = self.recommender.cache_stats()
        if stats is None:
            return
        lookups = CounterMetricFamily(
            "duorank_cache_lookups",
            "Embedding-cache lookups by outcome (error: Redis unreachable, computed anyway)",
            labels=["outcome"],
        )
        for outcome in ("hits", "misses", "errors", "corrupt"):
            lookups.add_metric([outcome], float(stats[outcome]))
        yield lookups
        yield GaugeMetricFamily(
            "duorank_cache_hit_ratio", "Embedding-cache hits / lookups", value=stats["hit_ratio"]
        )


def create_app(
    recommender: Recommender, *, token: str = "", limits: ServerLimits | None = None
) -> FastAPI:
    """Builds the ASGI app around an opened :class:`Recommender`."""
    lim = limits or ServerLimits()
    registry = CollectorRegistry()
    requests = Counter(
        "duorank_requests", "Requests by route and status", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "duorank_stage_seconds",
        "Latency per stage",
        ["stage"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    rejected = Counter(
        "duorank_rejected", "Requests refused by the overload policy", registry=registry
    )
    version_info = Gauge(
        "duorank_index_version_info", "Serving index version", ["version"], registry=registry
    )
    reloads = Counter(
        "duorank_index_reloads", "Index hot reloads by outcome", ["outcome"], registry=registry
    )
    fallbacks = Counter(
        "duorank_fallbacks", "Responses served by a fallback", ["kind"], registry=registry
    )
    registry.register(_CacheCollector(recommender))
    gate = _Gate(lim.max_in_flight, lim.max_queue)
    state: dict[str, Any] = {"ready": False, "stop": threading.Event()}

    def set_version(version: str) -> None:
        version_info.clear()
        version_info.labels(version).set(1)

    def warm_up() -> None:
        user = next(iter(recommender.histories), None)
        if user is not None:
            recommender.recommend(user, k=1, candidates=10)
        set_version(recommender.index_version)
        state["ready"] = True

    def reload_loop() -> None:
        while not state["stop"].wait(lim.reload_interval_s):
            try:
                if recommender.reload():
                    reloads.labels("swapped").inc()
                    set_version(recommender.index_version)
            except Exception as exc:  # a bad version is refused; the old one keeps serving
                reloads.labels("refused").inc()
                log.warning("refused new index version: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(warm_up)
        threading.Thread(target=reload_loop, name="index-reload", daemon=True).start()
        yield
        state["stop"].set()

    app = FastAPI(
        title="duorank",
        version="0.1.0",
        lifespan=lifespan,
        description="Two-stage recommendations: retrieval + point-wise reranking.",
    )

    @app.middleware("http")
    async def _guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        route = request.url.path
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > lim.max_body_bytes:
            requests.labels(route, "413").inc()
            return JSONResponse(
                {"detail": f"request body over {lim.max_body_bytes} bytes"}, status_code=413
            )
        if token and route not in OPEN_ROUTES:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                requests.labels(route, "401").inc()
                return JSONResponse(
                    {"detail": "missing or wrong bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        response = await call_next(request)
        requests.labels(route, str(response.status_code)).inc()
        return response

    async def run_model(fn: Callable[[], Any]) -> Any:
        if not gate.try_enter():
            rejected.inc()
            raise HTTPException(
                status_code=429,
                detail="overloaded: try again shortly",
                headers={"Retry-After": "1"},
            )
        try:
            async with gate.running:
                return await anyio.to_thread.run_sync(fn)
        finally:
            gate.leave()

    def check(value: int, limit: int, name: str) -> None:
        if value > limit:
            raise HTTPException(
                status_code=422, detail=f"{name}: {value} is over the limit of {limit}"
            )

    def history_of(events: list[Event] | None) -> list[HistoryEvent] | None:
        if events is None:
            return None
        check(len(events), lim.max_history, "history")
        return [HistoryEvent(e.item_id, e.timestamp, e.rating, e.label) for e in events]

    @app.post("/recommend")
    async def post_recommend(body: RecommendRequest) -> dict[str, Any]:
        """Top-k items: retrieval candidates reranked point-wise."""
        check(body.k, lim.max_k, "k")
        check(body.candidates, lim.max_candidates, "candidates")
        if body.allow is not None:
            check(len(body.allow), lim.max_items * 100, "allow")
        if body.user_id is None and body.history is None:
            raise HTTPException(status_code=422, detail="user_id or history: give at least one")
        history = history_of(body.history)
        started = time.perf_counter()
        try:
            result = await run_model(
                lambda: recommender.recommend(
                    body.user_id,
                    history=history,
                    profile=body.profile,
                    k=body.k,
                    candidates=max(body.candidates, body.k),
                    exclude_seen=body.exclude_seen,
                    allow=set(body.allow) if body.allow is not None else None,
                )
            )
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        for stage, ms in result.timings_ms.items():
            latency.labels(stage).observe(ms / 1000)
        latency.labels("total").observe(time.perf_counter() - started)
        if result.fallback:
            fallbacks.labels(result.fallback).inc()
        return asdict(result)

    @app.post("/score")
    async def post_score(body: ScoreRequest) -> dict[str, Any]:
        """Point-wise scores of the given items for the user."""
        check(len(body.item_ids), lim.max_items, "item_ids")
        if body.user_id is None and body.history is None:
            raise HTTPException(status_code=422, detail="user_id or history: give at least one")
        history = history_of(body.history)
        version = recommender.index_version
        try:
            items = await run_model(
                lambda: recommender.score(
                    body.user_id, body.item_ids, history=history, profile=body.profile
                )
            )
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        return {"items": [asdict(i) for i in items], "index_version": version}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: index and models loaded and warmed."""
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "index_version": recommender.index_version})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
