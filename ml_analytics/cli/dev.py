"""`ml-analytics dev`: the embedded default for a laptop (devstack.py), the service on it,
and optionally a replay of sample files beside it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ml_analytics.settings import Settings

if TYPE_CHECKING:
    from ml_analytics.devstack import DevDataDir, EmbeddedBroker, EmbeddedPostgres, Leftovers


def dev(args: argparse.Namespace) -> int:
    """`ml-analytics dev`: the embedded broker and PostgreSQL, then the service on them."""
    from ml_analytics.cli import run_async
    from ml_analytics.cli.run import run_service
    from ml_analytics.consumers.admin import ensure_topics
    from ml_analytics.devstack import (
        DataDirInUse,
        DevDataDir,
        EmbeddedBroker,
        EmbeddedPostgres,
        stop_process,
    )

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
        _report_leftovers(leftovers, data_dir)
        if args.fresh:
            workspace.clear()
        workspace.record()
        postgres = EmbeddedPostgres(workspace.postgres_dir).start()
        broker = EmbeddedBroker(args.kafka_port, log_path=data_dir / "broker.log").start()
        workspace.record(broker_pid=broker.pid)
        settings = _settings_on(postgres, broker)
        _print_addresses(settings, workspace)
        run_async(ensure_topics(settings))
        if replays:
            replay_process = _start_replay(replays, args, settings)
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


def _report_leftovers(leftovers: Leftovers, data_dir: Path) -> None:
    """Say what a previous dev, killed outright, left running and this one stopped."""
    if leftovers.stopped:
        killed = f" (pid {leftovers.dev_pid})" if leftovers.dev_pid else ""
        print(
            f"dev: the previous dev on {data_dir}{killed} ended without stopping its "
            f"services; stopped what it left running: {', '.join(leftovers.stopped)}",
            file=sys.stderr,
            flush=True,
        )


def _settings_on(postgres: EmbeddedPostgres, broker: EmbeddedBroker) -> Settings:
    """The service's settings, pointed at the embedded PostgreSQL and broker."""
    overrides = {
        "database_url": postgres.database_url("ml_analytics"),
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        "kafka_enable_idempotence": False,  # the embedded broker does not support it
    }
    return Settings(**overrides)  # type: ignore[arg-type]


def _print_addresses(settings: Settings, workspace: DevDataDir) -> None:
    """Where the dashboard, the API, the broker and the database are."""
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


def _start_replay(
    replays: list[Path], args: argparse.Namespace, settings: Settings
) -> subprocess.Popen[bytes]:
    """`ml-analytics replay` of the files in a child process, onto the embedded broker."""
    from ml_analytics.lifecycle import dies_with_this_thread

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
    return subprocess.Popen(command, env=env, preexec_fn=dies_with_this_thread())
