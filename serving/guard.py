"""The outermost layer of every HTTP request, as plain ASGI: body limits counted as read, the
bearer token (constant time), UTF-8 only, security headers on every response; JSON that any
input can be echoed in; secrets masked in the access log."""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class SafeJSONResponse(JSONResponse):
    """JSON that any input can be echoed in: non-ASCII escaped, so a lone surrogate in a
    validation error's ``input`` cannot turn a 422 into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def finite_json(value: Any) -> Any:
    """``value`` with non-finite floats spelled as strings: a 422 echoes the client's input,
    and JSON has no Infinity or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class BodyTooLargeError(Exception):
    """The body read so far is over the limit."""


class Guard:
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
        is_open: Callable[[str], bool],
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
        except BodyTooLargeError:
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
                raise BodyTooLargeError
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
