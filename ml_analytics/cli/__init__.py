"""The command line: `run`, `dev`, `replay`, `watch`, `skip`, `migrate` (one module each
here; `python -m ml_analytics` and the `ml-analytics` script call `main`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ml_analytics import __version__
from ml_analytics.settings import Settings

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (it comes with uvicorn[standard]):
    asyncpg and aiokafka spend noticeably less CPU on it than on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


AddCommand = Callable[..., argparse.ArgumentParser]  # a subparsers action's add_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ml-analytics",
        description="Event-driven inventory forecasting and stockout-risk alerts.",
    )
    parser.add_argument("--version", action="version", version=f"ml-analytics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (
        _add_run,
        _add_dev,
        _add_replay,
        _add_watch,
        _add_skip,
        _add_migrate,
    ):
        add_command(commands.add_parser)
    return parser


def _add_run(add_parser: AddCommand) -> None:
    add_parser(
        "run",
        help="the service against KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL",
        description="Apply migrations, create missing topics, then consume and serve HTTP.",
    )


def _add_dev(add_parser: AddCommand) -> None:
    """`dev`: where PostgreSQL keeps its data, the broker's port, files to replay."""
    dev = add_parser(
        "dev",
        help="the service on an embedded broker and PostgreSQL (no Docker needed)",
        description=(
            "Start a local Kafka-compatible broker (Tansu, in memory) and PostgreSQL "
            "(data kept in --data-dir), then the service on them."
        ),
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".dev-data"),
        help="where PostgreSQL keeps its data between runs (default: .dev-data)",
    )
    dev.add_argument("--fresh", action="store_true", help="delete --data-dir first: start clean")
    dev.add_argument(
        "--kafka-port",
        type=int,
        default=9092,
        help="port of the embedded broker on 127.0.0.1 (default: 9092)",
    )
    dev.add_argument(
        "--replay",
        type=Path,
        metavar="PATH",
        action="append",
        help="also replay this transactions or stock-levels file (repeat it for several, in order)",
    )
    dev.add_argument(
        "--replay-rate",
        type=_positive,
        metavar="EVENTS_PER_SECOND",
        help="cap the replay's publishing rate",
    )
    dev.add_argument(
        "--replay-speed",
        type=_positive,
        metavar="FACTOR",
        help="pace the replay by event time (86400 = a day of history per second)",
    )


def _add_replay(add_parser: AddCommand) -> None:
    """`replay`: the files, and how fast and how many of their events to publish."""
    replay = add_parser(
        "replay",
        help="publish a transactions or stock-levels CSV/CSV.gz to its topic",
        description=(
            "Columns event_id,product_id,occurred_at,quantity_units go to the transactions "
            "topic; event_id,product_id,as_of,stock_units (and optionally lead_time_days, "
            "on_order_units, order_multiple_units, target_service_level) to the "
            "stock-levels topic."
        ),
    )
    replay.add_argument(
        "paths",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="one or more files, published one after the other",
    )
    replay.add_argument(
        "--rate", type=_positive, metavar="EVENTS_PER_SECOND", help="cap the publishing rate"
    )
    replay.add_argument(
        "--speed",
        type=_positive,
        metavar="FACTOR",
        help="pace by event time (86400 = a day of history per second)",
    )
    replay.add_argument("--limit", type=int, help="publish at most this many events")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_watch(add_parser: AddCommand) -> None:
    watch = add_parser(
        "watch",
        help="print stockout-risk events as they are published",
        description="Follow the stockout-risk topic from its start; one line per event.",
    )
    watch.add_argument("--json", action="store_true", help="print the events as JSON lines")


def _add_skip(add_parser: AddCommand) -> None:
    """`skip`: the stalled partition and offset, a note, how long to wait."""
    skip = add_parser(
        "skip",
        help="move a stalled partition past a record batch that cannot be decoded",
        description=(
            "When GET /ready names a partition stuck at an offset (a record batch the "
            "consumer cannot decode), ask the replica that owns it to skip that batch. The "
            "skipped offsets are recorded in the dead-letter topic; the records stay in the "
            "topic until its retention ends. Refused unless the partition is stuck on a "
            "batch holding OFFSET. Needs a running service (it carries the request out) "
            "and DATABASE_URL."
        ),
    )
    skip.add_argument("--topic", required=True, help="the stalled topic")
    skip.add_argument("--partition", type=int, required=True, help="the stalled partition")
    skip.add_argument(
        "--offset", type=int, required=True, help="the offset it is stuck at (from /ready)"
    )
    skip.add_argument("--reason", help="a note kept with the request and in the dead letter")
    skip.add_argument(
        "--wait",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the outcome (default 60); the request stays queued after",
    )


def _add_migrate(add_parser: AddCommand) -> None:
    migrate = add_parser("migrate", help="apply database migrations and exit")
    migrate.add_argument(
        "--topics",
        action="store_true",
        help="also create the missing topics of topics.yaml (a one-shot init for deployments)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from ml_analytics.cli.run import run_service

        run_async(run_service(Settings()))
    elif args.command == "dev":
        from ml_analytics.cli.dev import dev

        return dev(args)
    elif args.command == "replay":
        from ml_analytics.cli.replay import replay_command

        return replay_command(args)
    elif args.command == "watch":
        from ml_analytics.cli.watch import watch_risk_events

        with contextlib.suppress(KeyboardInterrupt):
            run_async(watch_risk_events(Settings(), as_json=args.json))
    elif args.command == "skip":
        from ml_analytics.cli.skip import request_and_wait

        return run_async(request_and_wait(Settings(), args))
    elif args.command == "migrate":
        from ml_analytics.cli.migrate import migrate_command

        migrate_command(Settings(), topics=args.topics)
    return 0
