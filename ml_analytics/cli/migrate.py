"""`ml-analytics migrate [--topics]`: the database schema to its newest revision (and the
missing topics of topics.yaml): a one-shot init for deployments."""

from __future__ import annotations

from ml_analytics.settings import Settings


def migrate_command(settings: Settings, *, topics: bool) -> None:
    from ml_analytics.cli import run_async
    from ml_analytics.logs import configure_logging
    from ml_analytics.storage.database import migrate

    configure_logging(settings.log_level)
    run_async(migrate(settings.database_url))
    if topics:
        from ml_analytics.consumers.admin import ensure_topics

        run_async(ensure_topics(settings))
