"""uvicorn 0.55's h11 protocol, bounded: a request head of at most `max_head_bytes`
(431, connection closed) and each request, head and body, received within
`read_timeout_seconds` of its first byte (or of the connection), else 408 (http/server.py
says why). It subclasses uvicorn's internal H11Protocol and reads its connection state
(`conn`, `cycle`, `transport`), for which uvicorn has no public hook: written for
uvicorn 0.55 (pinned in pyproject.toml; tests/unit/test_adapters.py checks it).
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

WRITTEN_FOR = ("uvicorn", "0.55.")

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
