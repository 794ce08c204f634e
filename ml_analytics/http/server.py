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

from typing import Any

import uvicorn

from ml_analytics.adapters.uvicorn_h11 import BoundedH11Protocol
from ml_analytics.settings import Settings


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
