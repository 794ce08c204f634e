"""The HTTP server's own bounds: how large a request head may be and how long a
request may take to arrive.

uvicorn's httptools parser buffers a request head of any size before any middleware
sees it (ten unfinished 50 MB headers took a process from 147 to 702 MB), and no
uvicorn setting bounds the time a client may take to send its head or body, so a
few thousand slow clients hold as many connections for ever. The service therefore
runs uvicorn's h11 protocol with:
- a head at most HTTP_MAX_HEADER_BYTES (431, connection closed);
- each request, head and body, received within HTTP_READ_TIMEOUT_SECONDS of its
  first byte (or of the connection), else 408 and the connection closed;
- at most HTTP_MAX_CONNECTIONS connections (uvicorn's limit_concurrency: 503 past it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ml_analytics.settings import Settings

logger = logging.getLogger(__name__)

_READ_DONE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a size bound on the head and a time bound on
    receiving each request. Subclassed per server with the two limits set."""

    max_head_bytes = 32 * 1024
    read_timeout_seconds = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._arm_read_deadline()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_read_deadline()  # a new request starts (after a kept-alive one)
            buffered = len(self.conn.trailing_data[0])
            if buffered + len(data) > self.max_head_bytes:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"the request head is larger than {self.max_head_bytes} bytes",
                )
                return
        super().data_received(data)
        if self.conn.their_state in _READ_DONE:
            self._disarm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)

    def _arm_read_deadline(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(
                self.read_timeout_seconds, self._read_timed_out
            )

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing() or self.conn.their_state in _READ_DONE:
            return
        self._refuse(
            408,
            "Request Timeout",
            f"the request was not received within {self.read_timeout_seconds:g} s",
        )

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        logger.warning(
            "HTTP request refused",
            extra={"status": status, "detail": detail, "client": self.client},
        )
        self._disarm_read_deadline()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and (
            self.cycle is None or not self.cycle.response_started
        ):
            self.transport.write(_raw_response(status, reason, detail))
        self.transport.close()


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the service's app, with the bounds above."""
    protocol = type(
        "ServiceH11Protocol",
        (BoundedH11Protocol,),
        {
            "max_head_bytes": settings.http_max_header_bytes,
            "read_timeout_seconds": settings.http_read_timeout_seconds,
        },
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.ml_port,
        http=protocol,
        limit_concurrency=settings.http_max_connections,
        log_config=None,
        **options,
    )
