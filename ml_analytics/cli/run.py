"""`ml-analytics run`: migrations, topics, then the service (composition.py) behind
uvicorn until SIGTERM/SIGINT; `dev` prints a progress line meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import __version__, metrics
from ml_analytics.background import cancel_and_wait
from ml_analytics.composition import build_app
from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.consumers.broker import build_broker
from ml_analytics.http.server import uvicorn_config
from ml_analytics.logs import configure_logging
from ml_analytics.settings import Settings, redact_url
from ml_analytics.storage.database import create_engine, migrate

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _signals_taken_as_handled() -> Iterator[None]:
    """uvicorn stops gracefully on SIGTERM/SIGINT and then raises the signal again for
    the handler it found installed. The service still has clean-up to do (dispose the
    database pool) and a clean stop exits 0, so the handler it finds takes the signal
    as handled (installed from the main thread only, where signals can be)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handled) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _handled(signum: int, frame: object) -> None:
    logger.debug("stop signal handled", extra={"signal": signum})


async def run_service(
    settings: Settings, *, log_file: Path | None = None, progress_seconds: float | None = None
) -> None:
    """Apply migrations, create missing topics, then consume and serve until SIGTERM/SIGINT.

    With `log_file` the JSON log goes there; with `progress_seconds` a one-line summary
    is printed that often (`dev`)."""
    configure_logging(settings.log_level, log_file)
    logger.info(
        "starting ml-analytics",
        extra={
            "version": __version__,
            "database": redact_url(settings.database_url),
            "kafka": settings.kafka_bootstrap_servers,
            "group_id": settings.group_id,
            "topics": {role: spec.name for role, spec in settings.topics.topics.items()},
        },
    )
    await migrate(settings.database_url)
    await ensure_topics(settings)
    engine = create_engine(settings)
    broker = build_broker(settings)
    app = build_app(settings, engine, broker)
    server = uvicorn.Server(
        uvicorn_config(
            app,
            settings,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        )
    )
    progress = (
        asyncio.create_task(report_progress(engine, settings, progress_seconds))
        if progress_seconds
        else None
    )
    try:
        with _signals_taken_as_handled():
            await server.serve()  # returns after SIGTERM/SIGINT, once the lifespan has shut down
    finally:
        await cancel_and_wait(progress)
        await engine.dispose()
        logger.info("stopped")


def _total(counter: object, **labels: str) -> float:
    """The sum of a counter's samples whose labels include `labels`."""
    total = 0.0
    for metric in counter.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


async def report_progress(engine: AsyncEngine, settings: Settings, every_seconds: float) -> None:
    """Every `every_seconds`: events counted (and their rate), products with a forecast,
    risk events published by level, dead letters; and where the dashboard is."""
    from sqlalchemy import text

    dashboard = f"http://{settings.host}:{settings.ml_port}/dashboard"
    last_count, last_time = 0.0, time.monotonic()
    while True:
        await asyncio.sleep(every_seconds)
        counted = _total(metrics.EVENTS_INGESTED, outcome="counted")
        now = time.monotonic()
        rate = (counted - last_count) / (now - last_time)
        last_count, last_time = counted, now
        try:
            async with engine.connect() as connection:
                products, forecast = (
                    await connection.execute(
                        text(
                            "SELECT (SELECT count(*) FROM products), "
                            "(SELECT count(*) FROM product_models)"
                        )
                    )
                ).one()
        except Exception:
            products = forecast = "?"
        levels = ", ".join(
            f"{level} {int(_total(metrics.RISK_EVENTS, risk_level=level))}"
            for level in ("high", "medium", "low")
        )
        print(
            f"{time.strftime('%H:%M:%S')}  events counted {int(counted):,} ({rate:,.0f}/s)  "
            f"products forecast {forecast}/{products}  risk events: {levels}  "
            f"dead letters {int(_total(metrics.DEAD_LETTERS))}  dashboard {dashboard}",
            file=sys.stderr,
            flush=True,
        )
