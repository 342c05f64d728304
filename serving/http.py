"""The HTTP app (FastAPI): /recommend, /score, /healthz, /readyz, /metrics, /docs and the
explorer's routes, around an opened Recommender. Its request bodies are in
:mod:`serving.schemas`, the ASGI guard every request passes first in :mod:`serving.guard`, the
Prometheus metrics in :mod:`serving.telemetry`.

Model inference runs in worker threads, never on the event loop, behind a bounded admission
gate: when ``max_in_flight`` calls are running and ``max_queue`` more are waiting, a new call is
refused at once with 429 (a fast answer beats an unbounded queue). With a token configured,
every route but the probes (/healthz, /readyz) needs ``Authorization: Bearer <token>`` (compared
in constant time).

Everything a client controls is bounded before it costs memory: request bodies are counted as
they are read (chunked or not) and refused with 413 past ``max_body_bytes``; metrics are
labelled by the matched route template, never by the raw path; strings must be valid Unicode
text and numbers finite (422 naming the field). A background thread polls the index root's
CURRENT and hot-swaps verified new versions.
"""

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from catalog.errors import printable
from catalog.text import HistoryEvent
from serving.explorer import explorer_routes, is_open, read_report
from serving.guard import (
    Guard,
    SafeJSONResponse,
    finite_json,
    redact_access_log,
)
from serving.recommender import Recommendation, Recommender, RecommendRequest
from serving.schemas import (
    ERROR_RESPONSES,
    EVENTS_RESPONSES,
    Event,
    Ingested,
    Scores,
    ServerLimits,
    events_model,
    request_models,
)
from serving.telemetry import ServerMetrics

log = logging.getLogger(__name__)


OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json", "/favicon.ico"})
"""Answer without the token: the probes (orchestrators' health checks carry none) and the API's
documentation, which holds no data (its operations still need the token: **Authorize**)."""


DOCS_ASSETS = "/docs-assets/"
"""Swagger UI's files, open like /docs itself."""


UNMATCHED_ROUTE = "other"
"""The metrics label of every path that matches no route (raw paths would be unbounded)."""


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


def _swagger_assets() -> str | None:
    """The folder of the installed Swagger UI bundle (so /docs works offline), if any."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


class _Lifecycle:
    """Warm-up before ready, then the thread that hot-swaps verified new index versions."""

    def __init__(self, recommender: Recommender, metrics: ServerMetrics, interval_s: float) -> None:
        self.recommender = recommender
        self.metrics = metrics
        self.interval_s = interval_s
        self.ready = False
        self.stop = threading.Event()

    def warm_up(self) -> None:
        user = next(iter(self.recommender.histories), None)
        if user is not None:
            self.recommender.recommend(user, k=1, candidates=10)
        self.metrics.serving(self.recommender)
        self.ready = True

    def reload_loop(self) -> None:
        reloads = self.metrics.reloads
        while not self.stop.wait(self.interval_s):
            try:
                if self.recommender.reload():
                    reloads.labels("swapped").inc()
                    self.metrics.serving(self.recommender)
            except Exception as exc:  # a bad version is refused; the old one keeps serving
                reloads.labels("refused").inc()
                log.warning("refused new index version: %s", exc)
            self.metrics.degraded.set(1 if self.recommender.degraded else 0)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(self.warm_up)
        threading.Thread(target=self.reload_loop, name="index-reload", daemon=True).start()
        yield
        self.stop.set()


def create_app(
    recommender: Recommender,
    *,
    token: str = "",
    limits: ServerLimits | None = None,
    report: Path | None = None,
    public_demo: bool = False,
    metrics_dir: Path | None = None,
) -> FastAPI:
    """Builds the ASGI app around an opened :class:`Recommender`.

    Args:
        report: the offline evaluation report the explorer page shows (``duorank eval``'s
            JSON; its PNG plots beside it).
        public_demo: the explorer's read routes and /recommend answer without the token;
            only with a token (without one every route would be open).
        metrics_dir: one of several worker processes: /metrics sums every worker's values
            kept there (``PROMETHEUS_MULTIPROC_DIR``).

    Raises:
        ValueError: ``public_demo`` without a token, or a report that is not an evaluation
            report (naming the file).
    """
    if public_demo and not token:
        raise ValueError(
            "--public-demo opens only the page's routes and needs a token to keep /score, "
            "/metrics and /docs closed: set DUORANK_API_TOKEN"
        )
    if report is not None:
        read_report(report)
    lim = limits or ServerLimits()
    metrics = ServerMetrics(recommender, metrics_dir)
    lifecycle = _Lifecycle(recommender, metrics, lim.reload_interval_s)
    redact_access_log()
    assets = _swagger_assets()
    app = FastAPI(
        title="duorank",
        version="0.1.0",
        lifespan=lifecycle.lifespan,
        description="Two-stage recommendations: a first stage (the two-tower retriever) proposes "
        "candidates; the ranking stage, where it beat the first stage on validation, orders them "
        "(each response says which part served it, `served_by`, and why).",
        default_response_class=SafeJSONResponse,
        docs_url=None if assets else "/docs",
    )
    if assets:
        _offline_docs(app, assets)
    _error_handlers(app)
    app.add_middleware(
        Guard,
        token=token,
        max_body_bytes=lim.max_body_bytes,
        route_of=_route_label(app),
        count=metrics.count,
        is_open=lambda path: (
            path in OPEN_ROUTES or path.startswith(DOCS_ASSETS) or is_open(path, public_demo)
        ),
    )
    _model_routes(app, recommender, metrics, lim)
    _event_routes(app, recommender, metrics, lim)
    _probe_routes(app, recommender, metrics, lifecycle, token)
    explorer_routes(app, recommender, report)
    if token:
        _declare_bearer(app, lambda path: path in OPEN_ROUTES or is_open(path, public_demo))
    return app


def _declare_bearer(app: FastAPI, open_path: Callable[[str], bool]) -> None:
    """The schema says which operations need ``Authorization: Bearer``, so Swagger UI's
    **Authorize** sends the token with them (and generated clients know)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's DUORANK_API_TOKEN.",
                }
            }
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if open_path(path):
                        operation["security"] = []
                        continue
                    operation["security"] = [{"bearer": []}]
                    operation["responses"].setdefault(
                        "401", {"description": "Missing or wrong bearer token"}
                    )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _offline_docs(app: FastAPI, assets: str) -> None:
    """Swagger UI from the installed bundle under /docs-assets (no CDN)."""
    from starlette.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="duorank - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
            swagger_ui_parameters={"persistAuthorization": False, "tryItOutEnabled": True},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(Path(assets) / "favicon-32x32.png", media_type="image/png")


def _error_handlers(app: FastAPI) -> None:
    """Every error body through :class:`SafeJSONResponse` (any input can be echoed)."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
        return SafeJSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> SafeJSONResponse:
        return SafeJSONResponse(
            {"detail": finite_json(jsonable_encoder(exc.errors()))}, status_code=422
        )


def _route_label(app: FastAPI) -> Callable[[Scope], str]:
    """The metrics label of a request: its route's template, or :data:`UNMATCHED_ROUTE`."""

    def route_of(scope: Scope) -> str:
        for candidate in app.router.routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                return str(getattr(candidate, "path", UNMATCHED_ROUTE)) or UNMATCHED_ROUTE
        return UNMATCHED_ROUTE

    return route_of


def _history_of(events: list[Event] | None) -> list[HistoryEvent] | None:
    if events is None:
        return None
    return [HistoryEvent(e.item_id, e.timestamp, e.rating, e.label) for e in events]


def recommend_request(body: Any) -> RecommendRequest:
    """The one request a /recommend body poses (``candidates`` raised to ``k``, as documented)."""
    return RecommendRequest(
        body.user_id,
        _history_of(body.history),
        body.profile,
        body.k,
        max(body.candidates, body.k),
        body.exclude_seen,
        set(body.allow) if body.allow is not None else None,
        body.explain,
        body.second_stage,
    )


def _model_routes(
    app: FastAPI, recommender: Recommender, metrics: ServerMetrics, lim: ServerLimits
) -> None:
    """/recommend and /score: model calls in worker threads behind the admission gate."""
    gate = _Gate(lim.max_in_flight, lim.max_queue)
    recommend_model, score_model = request_models(lim)

    async def run_model(fn: Callable[[], Any]) -> Any:
        if not gate.try_enter():
            metrics.rejected.inc()
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

    @app.post("/recommend", responses=ERROR_RESPONSES, response_model=Recommendation)
    async def post_recommend(body: recommend_model) -> dict[str, Any]:  # type: ignore[valid-type]
        """Top-k items: the first stage's candidates (and the other sources'), ordered by the
        ranking stage where it serves; the answer says which part served it and why."""
        started = time.perf_counter()
        try:
            request = recommend_request(body)
            result = await run_model(lambda: recommender.answer(request))
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        except ValueError as exc:  # the same shape as every other 422
            error = {"type": "value_error", "loc": ("body",), "msg": str(exc), "input": None}
            raise RequestValidationError([error]) from None
        for stage, ms in result.timings_ms.items():
            metrics.latency.labels(stage).observe(ms / 1000)
        metrics.latency.labels("total").observe(time.perf_counter() - started)
        if result.fallback:
            metrics.fallbacks.labels(result.fallback).inc()
        return asdict(result)

    @app.post("/score", responses=ERROR_RESPONSES, response_model=Scores)
    async def post_score(body: score_model) -> dict[str, Any]:  # type: ignore[valid-type]
        """Point-wise scores of the given items for the user."""
        req: Any = body
        history = _history_of(req.history)
        version = recommender.index_version
        try:
            items = await run_model(
                lambda: recommender.score(
                    req.user_id, req.item_ids, history=history, profile=req.profile
                )
            )
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        return {"items": [asdict(i) for i in items], "index_version": version}


def _event_routes(
    app: FastAPI, recommender: Recommender, metrics: ServerMetrics, lim: ServerLimits
) -> None:
    """/events: live events into the online user store (never open without the token)."""
    body_model = events_model(lim)

    @app.post("/events", responses=EVENTS_RESPONSES, response_model=Ingested)
    async def post_events(body: body_model) -> dict[str, int]:  # type: ignore[valid-type]
        """Live events: each is visible to its user's next call on every worker; a retried
        delivery (the same ``event_id``) is accepted once. The nightly fold moves them into
        the dataset."""
        from online import LiveEvent

        if recommender.users is None:
            raise HTTPException(
                status_code=409,
                detail="this server has no online user store: start it with --user-store",
            )
        items = recommender.catalog.items
        unknown = [
            {
                "type": "value_error",
                "loc": ("body", "events", n, "item_id"),
                "msg": f"item {printable(e.item_id)!r} is not in the catalog",
                "input": None,
            }
            for n, e in enumerate(body.events)  # type: ignore[attr-defined]
            if e.item_id not in items
        ]
        if unknown:
            raise RequestValidationError(unknown[:20])
        events = [
            LiveEvent(
                e.event_id, e.user_id, HistoryEvent(e.item_id, e.timestamp, e.rating, e.label)
            )
            for e in body.events  # type: ignore[attr-defined]
        ]
        try:
            done = await anyio.to_thread.run_sync(lambda: recommender.ingest(events))
        except redis.RedisError as exc:
            log.warning("live events refused: the user store does not answer (%s)", exc)
            raise HTTPException(
                status_code=503,
                detail="the user store does not answer: retry (the same event ids are safe)",
                headers={"Retry-After": "1"},
            ) from None
        metrics.events.labels("accepted").inc(done.accepted)
        metrics.events.labels("duplicate").inc(done.duplicates)
        return {"accepted": done.accepted, "duplicates": done.duplicates}


def _probe_routes(
    app: FastAPI, recommender: Recommender, meters: ServerMetrics, lifecycle: _Lifecycle, token: str
) -> None:
    """/healthz, /readyz (both open without the token) and /metrics."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> SafeJSONResponse:
        """Readiness: index and models loaded and warmed. ``degraded`` is true while an older
        version serves because CURRENT failed verification; why (``degraded_reason``: paths
        and what CURRENT holds) only with the bearer token, so an open probe leaks nothing."""
        if not lifecycle.ready:
            return SafeJSONResponse({"status": "starting"}, status_code=503)
        body: dict[str, Any] = {"status": "ready", "index_version": recommender.index_version}
        if recommender.degraded:
            body["degraded"] = True
            given = request.headers.get("authorization", "")
            if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                body["degraded_reason"] = recommender.degraded
        return SafeJSONResponse(body)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics (text exposition format)."""
        return PlainTextResponse(meters.exposition(), media_type=CONTENT_TYPE_LATEST)
