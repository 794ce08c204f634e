"""The processes a test session started, found by a mark in their environment: every
child inherits it, also one its parent left behind (reparented to init)."""

from __future__ import annotations

import os
from pathlib import Path

MARK = "ML_ANALYTICS_TEST_SESSION"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def marked_processes(token: str, exclude: set[int | None] | None = None) -> dict[int, str]:
    """pid -> command line of every live process whose environment carries `token`
    (but those in `exclude`)."""
    wanted = f"{MARK}={token}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if exclude and int(entry.name) in exclude:
            continue
        if wanted not in _read(entry / "environ").split(b"\0"):
            continue
        stat = _read(entry / "stat").decode(errors="replace")
        if ") Z" in stat:  # a zombie: ended, only not reaped yet
            continue
        found[int(entry.name)] = _read(entry / "cmdline").replace(b"\0", b" ").decode()[:200]
    return found


def children_of(pid: int) -> dict[int, str]:
    """pid -> command line of the live direct children of `pid`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat").decode(errors="replace")
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[0] != "Z" and fields[1] == str(pid):
            found[int(entry.name)] = _read(entry / "cmdline").replace(b"\0", b" ").decode()[:200]
    return found
