"""The running service: migrations, topics, consumers and HTTP in one process."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import uvicorn

from ml_analytics import __version__
from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.consumers.ingestion import add_ingestion, build_broker
from ml_analytics.http.app import create_app
from ml_analytics.logs import configure_logging
from ml_analytics.settings import Settings, redact_url
from ml_analytics.storage.database import create_engine, migrate

logger = logging.getLogger(__name__)


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, except that after a graceful stop on SIGTERM/SIGINT it
    returns instead of re-raising the signal: the caller still has clean-up to do
    (dispose the database pool) and the exit code of a clean stop is 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def run_service(settings: Settings) -> None:
    """Apply migrations, create missing topics, then consume and serve until SIGTERM/SIGINT."""
    configure_logging(settings.log_level)
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
    ingestion = add_ingestion(broker, settings, engine)
    app = create_app(
        engine,
        broker,
        before_broker_stop=lambda: ingestion.drain(settings.shutdown_grace_seconds),
    )
    server = _GracefulServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.ml_port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        )
    )
    try:
        await server.serve()  # returns after SIGTERM/SIGINT, once the lifespan has shut down
    finally:
        await engine.dispose()
        logger.info("stopped")
