"""The command line: `run`, `dev`, `replay`, `watch`, `skip`, `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Coroutine
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ml-analytics",
        description="Event-driven inventory forecasting and stockout-risk alerts.",
    )
    parser.add_argument("--version", action="version", version=f"ml-analytics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "run",
        help="the service against KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL",
        description="Apply migrations, create missing topics, then consume and serve HTTP.",
    )

    dev = commands.add_parser(
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

    replay = commands.add_parser(
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

    watch = commands.add_parser(
        "watch",
        help="print stockout-risk events as they are published",
        description="Follow the stockout-risk topic from its start; one line per event.",
    )
    watch.add_argument("--json", action="store_true", help="print the events as JSON lines")

    skip = commands.add_parser(
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

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.add_argument(
        "--topics",
        action="store_true",
        help="also create the missing topics of topics.yaml (a one-shot init for deployments)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from ml_analytics.runner import run_service

        run_async(run_service(Settings()))
    elif args.command == "dev":
        return _dev(args)
    elif args.command == "replay":
        return _replay(args)
    elif args.command == "watch":
        from ml_analytics.watch import watch_risk_events

        with contextlib.suppress(KeyboardInterrupt):
            run_async(watch_risk_events(Settings(), as_json=args.json))
    elif args.command == "skip":
        from ml_analytics.skip import request_and_wait

        return run_async(request_and_wait(Settings(), args))
    elif args.command == "migrate":
        from ml_analytics.logs import configure_logging
        from ml_analytics.storage.database import migrate

        settings = Settings()
        configure_logging(settings.log_level)
        run_async(migrate(settings.database_url))
        if args.topics:
            from ml_analytics.consumers.admin import ensure_topics

            run_async(ensure_topics(settings))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from ml_analytics.replay import replay_file

    missing = [str(path) for path in args.paths if not path.is_file()]
    if missing:
        print(f"replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = Settings()
    for path in args.paths:
        try:
            result = run_async(
                replay_file(
                    path,
                    settings,
                    rate=args.rate,
                    speed=args.speed,
                    limit=args.limit,
                    progress=not args.no_progress,
                )
            )
        except ValueError as error:
            print(f"replay: {path}: {error}", file=sys.stderr)
            return 2
        rate = result.published / result.seconds if result.seconds else 0.0
        print(
            f"replay: published {result.published} {result.kind.replace('_', '-')} events to "
            f"{result.topic} in {result.seconds:.1f} s ({rate:,.0f}/s)",
            file=sys.stderr,
        )
    return 0


def _dev(args: argparse.Namespace) -> int:
    from ml_analytics.consumers.admin import ensure_topics
    from ml_analytics.devstack import (
        DataDirInUse,
        DevDataDir,
        EmbeddedBroker,
        EmbeddedPostgres,
        stop_process,
    )
    from ml_analytics.lifecycle import dies_with_this_thread
    from ml_analytics.runner import run_service

    replays: list[Path] = args.replay or []
    missing = [str(path) for path in replays if not path.is_file()]
    if missing:
        print(f"dev: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    data_dir: Path = args.data_dir.resolve()
    workspace = DevDataDir(data_dir)
    try:
        leftovers = workspace.claim()
    except DataDirInUse as error:
        print(f"dev: {error}", file=sys.stderr)
        return 1
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    replay_process: subprocess.Popen[bytes] | None = None
    try:
        if leftovers.stopped:
            killed = f" (pid {leftovers.dev_pid})" if leftovers.dev_pid else ""
            print(
                f"dev: the previous dev on {data_dir}{killed} ended without stopping its "
                f"services; stopped what it left running: {', '.join(leftovers.stopped)}",
                file=sys.stderr,
                flush=True,
            )
        if args.fresh:
            workspace.clear()
        workspace.record()
        postgres = EmbeddedPostgres(workspace.postgres_dir).start()
        broker = EmbeddedBroker(args.kafka_port, log_path=data_dir / "broker.log").start()
        workspace.record(broker_pid=broker.pid)
        overrides = {
            "database_url": postgres.database_url("ml_analytics"),
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "kafka_enable_idempotence": False,  # the embedded broker does not support it
        }
        settings = Settings(**overrides)  # type: ignore[arg-type]
        print(
            "ml-analytics dev\n"
            f"  Dashboard   http://{settings.host}:{settings.ml_port}/dashboard\n"
            f"  HTTP        http://{settings.host}:{settings.ml_port}  (/health, /ready, /docs)\n"
            f"  Kafka       {settings.kafka_bootstrap_servers}  (embedded Tansu, in memory)\n"
            f"  PostgreSQL  {settings.database_url}  (data in {workspace.postgres_dir})\n"
            f"  Risk events python -m ml_analytics watch   (with KAFKA_BOOTSTRAP_SERVERS="
            f"{settings.kafka_bootstrap_servers})\n",
            file=sys.stderr,
            flush=True,
        )
        run_async(ensure_topics(settings))
        if replays:
            command = [sys.executable, "-m", "ml_analytics", "replay", "--no-progress"]
            command += list(map(str, replays))
            if args.replay_rate:
                command += ["--rate", str(args.replay_rate)]
            if args.replay_speed:
                command += ["--speed", str(args.replay_speed)]
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                "KAFKA_ENABLE_IDEMPOTENCE": "false",
            }
            replay_process = subprocess.Popen(command, env=env, preexec_fn=dies_with_this_thread())
        print(f"  Log         {data_dir / 'service.log'} (JSON lines)\n", file=sys.stderr)
        run_async(run_service(settings, log_file=data_dir / "service.log", progress_seconds=5.0))
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(replay_process)
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()
        workspace.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
