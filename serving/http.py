"""The HTTP API (FastAPI): /recommend, /score, /healthz, /readyz, /metrics and OpenAPI docs.

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
import json
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_plus

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    create_model,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.text import HistoryEvent
from catalog.thresholds import RATING_SCALE, TIMESTAMP_LIMIT
from serving.explorer import explorer_routes, is_open, read_report
from serving.recommender import Recommendation, RecommendedItem, Recommender

log = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json", "/favicon.ico"})
"""Answer without the token: the probes (orchestrators' health checks carry none) and the API's
documentation, which holds no data (its operations still need the token: **Authorize**)."""
DOCS_ASSETS = "/docs-assets/"
"""Swagger UI's files, open like /docs itself."""

UNMATCHED_ROUTE = "other"
"""The metrics label of every path that matches no route (raw paths would be unbounded)."""

SECRET_QUERY_PARAMS = ("token", "access_token", "api_key")
"""Query parameters whose values never reach the access log."""

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
"""Sent with every response: no MIME sniffing, no framing, no token-bearing referrers."""
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""The page's policy: its own scripts and styles only, never framed."""
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""/docs: FastAPI's Swagger UI page starts the bundle with an inline script."""


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """Bounds on requests and concurrency."""

    max_k: int = 100
    max_candidates: int = 1000
    max_history: int = 1000
    max_items: int = 1000
    max_allow: int = 100_000
    max_body_bytes: int = 1 << 20
    max_in_flight: int = 2
    max_queue: int = 8
    reload_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reload_interval_s) and self.reload_interval_s > 0):
            raise ValueError(
                f"reload interval {self.reload_interval_s!r}: must be a finite number of "
                "seconds above 0 (0 would poll CURRENT in a busy loop)"
            )


def _unicode_text(value: str) -> str:
    """Rejects lone surrogates: JSON escapes can spell them, but they are not text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode text: lone surrogate at position {exc.start}"
        ) from None
    return value


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: ``3`` and ``3.0``, never ``true`` or ``"3"`` (which pydantic's
    lax mode would take as 1 and 3)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("expected an integer")
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


def _id_of_number(value: Any) -> Any:
    """Ids are text, but a client may send ``42`` for ``"42"``: ids are names, not numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[Text, BeforeValidator(_id_of_number), Field(min_length=1, max_length=200)]


class Event(BaseModel):
    """A past interaction sent with the request (for users the server has not seen)."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id = Field(description="An item of the catalog (a number is read as its id).")
    timestamp: int = Field(
        default=0,
        ge=-TIMESTAMP_LIMIT,
        le=TIMESTAMP_LIMIT,
        description="When it happened, in the units of the dataset's log (epoch seconds for "
        "MovieLens); at most 2**53 in absolute value.",
    )
    rating: float | None = Field(
        default=None,
        allow_inf_nan=False,
        ge=RATING_SCALE[0],
        le=RATING_SCALE[1],
        description="Stars from 0 to 5; 4 and up is a like.",
    )
    label: int | None = Field(default=None, ge=0, le=1, description="1 like, 0 dislike.")

    _integers = field_validator("timestamp", "label", mode="before")(_json_integer)


class _UserRequest(BaseModel):
    """Names a user by id, by history, or both ("user_id or history" in the schema too, so
    generated clients and fuzzers know it)."""

    model_config = ConfigDict(
        extra="forbid",  # a misspelt field is a 422 naming it, never silently ignored
        json_schema_extra={
            "anyOf": [
                {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
                {"required": ["history"], "properties": {"history": {"type": "array"}}},
            ]
        },
    )

    _integers = field_validator("k", "candidates", mode="before", check_fields=False)(_json_integer)

    @model_validator(mode="after")
    def _user_id_or_history(self) -> "_UserRequest":
        if getattr(self, "user_id", None) is None and getattr(self, "history", None) is None:
            raise ValueError("give user_id or history (or both)")
        return self


def _request_models(lim: ServerLimits) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request bodies with this server's limits, so OpenAPI states them and 422 enforces."""
    user: dict[str, Any] = {
        "user_id": (
            Annotated[Text, BeforeValidator(_id_of_number), Field(max_length=200)] | None,
            Field(default=None, description="A user of the dataset (a number is read as its id)."),
        ),
        "history": (
            list[Event] | None,
            Field(
                default=None,
                max_length=lim.max_history,
                description="Past interactions, for a user the server does not know or to "
                "replace a known user's stored history; items not in the catalog are ignored "
                "and named in `warnings`.",
            ),
        ),
        "profile": (
            dict[Id, Annotated[Text, Field(max_length=1000)]] | None,
            Field(default=None, description="Profile attributes (age, country, ...) as text."),
        ),
    }
    recommend = create_model(
        "RecommendRequest",
        __base__=_UserRequest,
        __doc__="Who to recommend for (a known user id, or a history and profile) and how many.",
        **user,
        k=(int, Field(default=10, ge=1, le=lim.max_k, description="How many items to return.")),
        candidates=(
            int,
            Field(
                default=100,
                ge=1,
                le=lim.max_candidates,
                description="The first stage's candidates (the ranking stage adds its other "
                "sources' own).",
            ),
        ),
        exclude_seen=(
            StrictBool,
            Field(default=True, description="Leave out items already in the history."),
        ),
        allow=(
            list[Id] | None,
            Field(
                default=None,
                max_length=lim.max_allow,
                description="Only these items may be returned (a shelf, a category).",
            ),
        ),
        second_stage=(
            StrictBool,
            Field(
                default=True,
                description="False: the first stage's order (no ranking stage or cross-encoder), "
                "to compare with.",
            ),
        ),
        explain=(
            StrictBool,
            Field(
                default=False,
                description="Per item: its sources, first-stage rank, the history items "
                "closest to it and the ranking-stage features that moved it most.",
            ),
        ),
    )
    score = create_model(
        "ScoreRequest",
        __base__=_UserRequest,
        __doc__="Point-wise scores of given items for a user.",
        **user,
        item_ids=(
            list[Id],
            Field(
                min_length=1,
                max_length=lim.max_items,
                description="The items to score, each on its own (point-wise).",
            ),
        ),
    )
    return recommend, score


class Scores(BaseModel):
    """``POST /score``'s answer: each asked item's scores, in the order asked."""

    items: list[RecommendedItem]
    index_version: str


class SafeJSONResponse(JSONResponse):
    """JSON that any input can be echoed in: non-ASCII escaped, so a lone surrogate in a
    validation error's ``input`` cannot turn a 422 into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats spelled as strings: a 422 echoes the client's input,
    and JSON has no Infinity or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class _Problem(BaseModel):
    detail: Any


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": _Problem, "description": "The body is not UTF-8 JSON"},
    401: {"model": _Problem, "description": "Missing or wrong bearer token"},
    404: {"model": _Problem, "description": "Unknown user id (without a history) or item id"},
    413: {"model": _Problem, "description": "Request body over the server's limit"},
    429: {"model": _Problem, "description": "Overloaded: retry after the Retry-After seconds"},
}


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


class _BodyTooLargeError(Exception):
    """The body read so far is over the limit."""


class _Guard:
    """The outermost check of every HTTP request, as plain ASGI.

    In order: a declared Content-Length over the limit (413), the bearer token (401), then the
    body read in full up to the limit, whatever the framing (413 once over it, so a chunked
    upload cannot grow memory), and replayed to the app. Every response, error handlers' and
    unhandled exceptions' (500) included, is counted under the matched route template.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        max_body_bytes: int,
        route_of: Callable[[Scope], str],
        count: Callable[[str, str], None],
        is_open: Callable[[str], bool] = OPEN_ROUTES.__contains__,
    ) -> None:
        self.app = app
        self.is_open = is_open
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.route_of = route_of
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope)
        status: list[int] = []

        policy = DOCS_CONTENT_SECURITY_POLICY if scope["path"] == "/docs" else None

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
                message = {**message, "headers": _with_security_headers(message, policy)}
            await send(message)

        try:
            await self._handle(scope, receive, send_counted)
        except Exception:
            self.count(route, str(status[0]) if status else "500")  # ServerErrorMiddleware: 500
            raise
        self.count(route, str(status[0]) if status else "499")  # 499: client went away first

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._refuse(scope, send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        if self.token and not self.is_open(scope["path"]):
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                await self._refuse(
                    scope,
                    send,
                    401,
                    "missing or wrong bearer token",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
        try:
            body = await self._read_body(receive)
        except _BodyTooLargeError:
            await self._refuse(scope, send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        if body is None:  # the client disconnected mid-body: nobody to answer
            return
        if not _utf8(body):  # JSON parsers guess UTF-16 and UTF-32 from NUL bytes: refuse them
            await self._refuse(scope, send, 400, "the body is not UTF-8 JSON")
            return
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLargeError
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _refuse(
        scope: Scope, send: Send, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        response = SafeJSONResponse({"detail": detail}, status_code=status, headers=headers)
        await response(scope, _no_receive, send)


def _utf8(body: bytes) -> bool:
    """Whether ``body`` is UTF-8 that JSON can hold (no NUL byte: JSON escapes control
    characters, so a NUL means UTF-16 or UTF-32)."""
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _with_security_headers(start: Message, policy: str | None) -> list[tuple[bytes, bytes]]:
    """``start``'s headers plus :data:`SECURITY_HEADERS` and a content security policy."""
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"x-frame-options"]
    csp = (policy or CONTENT_SECURITY_POLICY).encode("latin-1")
    return [*headers, *SECURITY_HEADERS, (b"content-security-policy", csp)]


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def redact_query(text: str) -> str:
    """``text`` with the value of every :data:`SECRET_QUERY_PARAMS` parameter in its query
    string masked. Names are matched after percent-decoding (``tok%65n``), ``;`` separates
    parameters like ``&``, and an encoded ``=`` (``token%3DS``) masks the whole parameter."""
    path, mark, rest = text.partition("?")
    if not mark:
        return text
    query, space, tail = rest.partition(" ")
    query, hash_mark, fragment = query.partition("#")
    parts = re.split(r"([&;])", query)
    for n in range(0, len(parts), 2):
        name, eq, _ = parts[n].partition("=")
        decoded = name
        for _ in range(3):  # a name encoded more than once is decoded as often
            decoded = unquote_plus(decoded)
        if decoded.partition("=")[0].strip().casefold() in SECRET_NAMES:
            parts[n] = f"{name}={'***'}" if eq else "***"
    return f"{path}?{''.join(parts)}{hash_mark}{fragment}{space}{tail}"


SECRET_NAMES = frozenset(n.casefold() for n in SECRET_QUERY_PARAMS)


class RedactSecrets(logging.Filter):
    """Masks the values of :data:`SECRET_QUERY_PARAMS` in uvicorn's access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


def redact_access_log() -> None:
    """Installs :class:`RedactSecrets` on uvicorn's access logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


def _swagger_assets() -> str | None:
    """The folder of the installed Swagger UI bundle (so /docs works offline), if any."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


class _Metrics:
    """The service's Prometheus metrics, in a registry of their own."""

    def __init__(self, recommender: Recommender) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "duorank_requests",
            "Requests by route template and status",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "duorank_stage_seconds",
            "Latency per stage",
            ["stage"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.rejected = Counter(
            "duorank_rejected", "Requests refused by the overload policy", registry=registry
        )
        self.version_info = Gauge(
            "duorank_index_version_info", "Serving index version", ["version"], registry=registry
        )
        self.degraded = Gauge(
            "duorank_index_degraded",
            "1 while serving an older verified version because CURRENT failed verification",
            registry=registry,
        )
        self.reloads = Counter(
            "duorank_index_reloads", "Index hot reloads by outcome", ["outcome"], registry=registry
        )
        self.fallbacks = Counter(
            "duorank_fallbacks", "Responses served by a fallback", ["kind"], registry=registry
        )
        registry.register(_CacheCollector(recommender))

    def count(self, route: str, status: str) -> None:
        """One response of ``route`` (a template) with ``status``."""
        self.requests.labels(route, status).inc()

    def serving(self, recommender: Recommender) -> None:
        """The version that serves, and whether it is a fallback."""
        self.version_info.clear()
        self.version_info.labels(recommender.index_version).set(1)
        self.degraded.set(1 if recommender.degraded else 0)


class _Lifecycle:
    """Warm-up before ready, then the thread that hot-swaps verified new index versions."""

    def __init__(self, recommender: Recommender, metrics: _Metrics, interval_s: float) -> None:
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
) -> FastAPI:
    """Builds the ASGI app around an opened :class:`Recommender`.

    Args:
        report: the offline evaluation report the explorer page shows (``duorank eval``'s
            JSON; its PNG plots beside it).
        public_demo: the explorer's read routes and /recommend answer without the token;
            only with a token (without one every route would be open).

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
    metrics = _Metrics(recommender)
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
        _Guard,
        token=token,
        max_body_bytes=lim.max_body_bytes,
        route_of=_route_label(app),
        count=metrics.count,
        is_open=lambda path: (
            path in OPEN_ROUTES or path.startswith(DOCS_ASSETS) or is_open(path, public_demo)
        ),
    )
    _model_routes(app, recommender, metrics, lim)
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
            {"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422
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


def _model_routes(
    app: FastAPI, recommender: Recommender, metrics: _Metrics, lim: ServerLimits
) -> None:
    """/recommend and /score: model calls in worker threads behind the admission gate."""
    gate = _Gate(lim.max_in_flight, lim.max_queue)
    recommend_model, score_model = _request_models(lim)

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

    @app.post("/recommend", responses=_ERRORS, response_model=Recommendation)
    async def post_recommend(body: recommend_model) -> dict[str, Any]:  # type: ignore[valid-type]
        """Top-k items: the first stage's candidates (and the other sources'), ordered by the
        ranking stage where it serves; the answer says which part served it and why."""
        req: Any = body
        history = _history_of(req.history)
        started = time.perf_counter()
        try:
            result = await run_model(
                lambda: recommender.recommend(
                    req.user_id,
                    history=history,
                    profile=req.profile,
                    k=req.k,
                    candidates=max(req.candidates, req.k),
                    exclude_seen=req.exclude_seen,
                    allow=set(req.allow) if req.allow is not None else None,
                    explain=req.explain,
                    second_stage=req.second_stage,
                )
            )
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

    @app.post("/score", responses=_ERRORS, response_model=Scores)
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


def _probe_routes(
    app: FastAPI, recommender: Recommender, meters: _Metrics, lifecycle: _Lifecycle, token: str
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
        return PlainTextResponse(generate_latest(meters.registry), media_type=CONTENT_TYPE_LATEST)
