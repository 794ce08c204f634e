"""The HTTP app's middleware: body size, bearer token, request metrics."""

from __future__ import annotations

import hmac
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_analytics import metrics


class BodyLimit:
    """413 for a request body over `max_bytes`, whether it declares its length or not.

    The body is read here (at most `max_bytes` of it) and handed on whole: FastAPI
    would turn an error raised while it reads the body into a plain 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # waits for the disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            status_code=413,
            content={"detail": f"request body is larger than {self.max_bytes} bytes"},
        )
        await response(scope, receive, send)


class BearerToken:
    """401 unless the request carries `Authorization: Bearer <HTTP_BEARER_TOKEN>`;
    /health stays open for liveness probes."""

    OPEN_PATHS = frozenset({"/health"})

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        # The scheme is case-insensitive (RFC 9110 11.1): "bearer" and "BEARER" too.
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            status_code=401,
            content={"detail": "missing or wrong bearer token (Authorization: Bearer …)"},
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


# The methods of RFC 9110 and PATCH (RFC 5789); any other is counted as "other", so
# that a client inventing methods cannot add a time series per request.
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
UNMATCHED_ROUTE = "unmatched"


class RequestMetrics:
    """Latency of every request, by method, route template and status.

    Every label comes from a closed set: a method outside STANDARD_METHODS is "other",
    the route is the matched route's template (never the raw path; "unmatched" for a
    request no route took, such as one refused before routing), and the status is
    one the service itself sends.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            method = scope["method"] if scope["method"] in STANDARD_METHODS else "other"
            template = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            metrics.HTTP_REQUEST_SECONDS.labels(method, template, str(status)).observe(
                time.perf_counter() - started
            )
