"""Each adapter to another package's internals names the upstream version it was
written for; an upgrade fails here, loudly, until the adapter is read again. Each
also checks that the internals it leans on are still there."""

from __future__ import annotations

import importlib
import inspect
import platform
from importlib.metadata import version

import pytest

ADAPTERS = ("aiokafka_fetcher", "uvicorn_h11", "process_pool")


def installed(package: str) -> str:
    return platform.python_version() if package == "python" else version(package)


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_adapter_runs_on_the_upstream_version_it_was_written_for(name: str) -> None:
    adapter = importlib.import_module(f"ml_analytics.adapters.{name}")
    package, prefix = adapter.WRITTEN_FOR
    assert installed(package).startswith(prefix), (
        f"ml_analytics/adapters/{name}.py was written for {package} {prefix}x and "
        f"{package} {installed(package)} is installed: read the adapter against the new "
        "release (its docstring says what it relies on), then move WRITTEN_FOR and the pin"
    )


def test_the_internals_the_adapters_lean_on_are_there() -> None:
    from concurrent.futures import ProcessPoolExecutor

    import aiokafka.consumer.fetcher as fetcher
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert "_unpack_records" in vars(fetcher.PartitionRecords)
    init = inspect.getsource(fetcher.PartitionRecords.__init__)
    assert "self._records" in init and "self._tp" in init
    for method in ("connection_made", "data_received", "connection_lost"):
        assert method in vars(H11Protocol)
    assert "self.conn" in inspect.getsource(H11Protocol.__init__)
    assert "_adjust_process_count" in vars(ProcessPoolExecutor)
    assert "self._processes" in inspect.getsource(ProcessPoolExecutor.__init__)


def test_no_module_outside_the_adapters_reaches_into_those_internals() -> None:
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "ml_analytics"
    internals = ("aiokafka.consumer.fetcher", "uvicorn.protocols", "._adjust_process_count",
                 "._processes", ".PartitionRecords", "_unpack_records")  # fmt: skip
    offenders = [
        f"{path.relative_to(package)}: {needle}"
        for path in package.rglob("*.py")
        if "adapters" not in path.parts
        for needle in internals
        if needle in path.read_text()
    ]
    assert offenders == []
