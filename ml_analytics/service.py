"""The running service: migrations, topics, consumers and HTTP in one process."""

from __future__ import annotations

import logging

import uvicorn

from ml_analytics import __version__
from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.consumers.ingestion import add_ingestion, build_broker
from ml_analytics.http.app import create_app
from ml_analytics.logs import configure_logging
from ml_analytics.settings import Settings, redact_url
from ml_analytics.storage.database import create_engine, migrate

logger = logging.getLogger(__name__)


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
    add_ingestion(broker, settings, engine)
    app = create_app(engine, broker)
    server = uvicorn.Server(
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
