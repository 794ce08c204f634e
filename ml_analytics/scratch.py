"""The service's temporary directories, and those a killed predecessor left behind.

A service removes its temporary directories when it stops (and a dropped object its
own), but one killed outright (SIGKILL, the OOM killer) cannot: restarted in a loop
outside compose (whose service has a tmpfs of its own), it would fill the temporary
directory one model file at a time. So each directory is named after the host and
the process that made it, and the next one of the same kind made on this host first
removes those whose process no longer runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "ml-analytics-"


def make_directory(kind: str) -> Path:
    """A new temporary directory for this process's `kind` of files ("workers",
    "models"), after removing those of the same kind left by ended processes."""
    remove_left_behind(kind)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{_host()}-{os.getpid()}-"))


def remove_left_behind(kind: str) -> list[Path]:
    """Remove the `kind` directories in the temporary directory made on this host by a
    process that no longer runs; the ones removed."""
    root = Path(tempfile.gettempdir())
    named = re.compile(rf"{re.escape(PREFIX + kind)}-{re.escape(_host())}-(\d+)-[a-z0-9_]+")
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = named.fullmatch(entry.name)
        if match is None or _running(int(match.group(1))) or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():  # another user's may not be ours to remove
            removed.append(entry)
    if removed:
        logger.info(
            "removed temporary directories left by ended processes",
            extra={"kind": kind, "count": len(removed)},
        )
    return removed


def _host() -> str:
    """This host's name as a directory name may hold it."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's (EPERM), or no pid at all: left alone
        return True
    return True
