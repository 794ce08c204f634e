"""aiokafka 0.14's fetcher, taught to report a record batch it cannot decode instead of
raising it on every fetch (consumers/stalls.py says why).

aiokafka decodes a fetched batch while `getmany()` hands out records; a batch it
cannot decode raises there, for ever, and drops the records already drained from the
other partitions. This replaces the fetcher's per-partition record iterator
(`PartitionRecords`, an internal class) with one that, on such an error, offers an
`UndecodableBatch` to the claimants registered here and, when one claims it, ends
that partition's records without raising. A consumer nobody claims for gets
aiokafka's own error. Written for aiokafka 0.14 (pinned in pyproject.toml;
tests/unit/test_adapters.py and test_stalls.py check it against real batches).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiokafka.consumer.fetcher as fetcher
from aiokafka import TopicPartition

logger = logging.getLogger(__name__)

WRITTEN_FOR = ("aiokafka", "0.14.")


@dataclass(frozen=True)
class UndecodableBatch:
    partition: TopicPartition
    offset: int  # the consumer's position: the first record not delivered
    batch_next_offset: int | None  # just past the bad batch (None: its header was unreadable)
    error: Exception


Claimant = Callable[[UndecodableBatch], bool]
_claimants: list[Claimant] = []
_install_lock = threading.Lock()


class _BatchTracker:
    """Stands in for aiokafka's MemoryRecords, remembering the last batch handed out."""

    __slots__ = ("_inner", "last")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.last: Any = None

    def has_next(self) -> bool:
        return bool(self._inner.has_next())

    def next_batch(self) -> Any:
        self.last = None  # if reading the header itself fails, no batch is known
        self.last = self._inner.next_batch()
        return self.last

    def size_in_bytes(self) -> int:
        return int(self._inner.size_in_bytes())


class _GuardedPartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    def _unpack_records(self) -> Iterator[Any]:
        tracker = _BatchTracker(self._records)  # type: ignore[has-type]
        self._records = tracker
        try:
            yield from super()._unpack_records()
        except Exception as error:  # CorruptRecordException, UnsupportedCodecError, cramjam's
            last = tracker.last
            batch = UndecodableBatch(
                partition=self._tp,
                offset=self.next_fetch_offset,
                batch_next_offset=last.next_offset if last is not None else None,
                error=error,
            )
            if not any(_claimed_by(claimant, batch) for claimant in list(_claimants)):
                raise  # no consumer of ours: aiokafka's own behaviour
            # Claimed: this partition's records end here; getmany() returns normally.


def _claimed_by(claimant: Claimant, batch: UndecodableBatch) -> bool:
    try:
        return claimant(batch)
    except Exception:
        logger.exception("a claimant of an undecodable batch failed")
        return False


def claim_undecodable_batches(claimant: Claimant) -> None:
    """From now on, every aiokafka consumer of this process offers its undecodable
    batches to `claimant` (and to the others registered), which returns whether it
    takes it."""
    with _install_lock:
        if fetcher.PartitionRecords is not _GuardedPartitionRecords:
            fetcher.PartitionRecords = _GuardedPartitionRecords
        _claimants.append(claimant)


def release_undecodable_batches(claimant: Claimant) -> None:
    with _install_lock:
        if claimant in _claimants:
            _claimants.remove(claimant)
