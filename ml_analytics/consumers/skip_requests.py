"""Carrying out operators' skip requests (`ml-analytics skip`) for stalled partitions.

An offset commit from outside an active consumer group is refused by Kafka, so the
command does not commit: it queues a request in PostgreSQL, and the replica whose
consumer is stuck on that partition carries it out. While a replica has a stalled
partition it looks for requests every second. A request is carried out only when
its offset lies in the batch the partition is stuck on (a typo cannot skip good
records); otherwise it is refused with the reason. Carrying it out, in the
ingestion worker after the batches before it:
1. a dead letter records what is skipped (topic, partition, first and last offset,
   the decoding error, the request); the records stay in the topic until its
   retention ends, for whoever wants to recover them;
2. the consumer seeks past the batch, commits that offset and resumes the partition;
3. the request is marked done with the range skipped.
A crash between 1 and 2 publishes the dead letter again on the next attempt; no
record is skipped without one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.background import BackgroundLoop
from ml_analytics.consumers.stalls import PartitionStalls, Stall
from ml_analytics.events import DeadLetter
from ml_analytics.services.ingestion.sort import dead_letter_for
from ml_analytics.storage.skip_requests import SkipRequest, finish_skip, pending_skips

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0

RunInOrder = Callable[[Callable[[], Awaitable[None]]], Awaitable[bool]]
PublishDeadLetters = Callable[[list[DeadLetter]], Awaitable[None]]


class StallSkipper:
    """Watches for skip requests while this replica has a stalled partition."""

    def __init__(
        self,
        stalls: PartitionStalls,
        consumer: Callable[[], Any],
        engine: AsyncEngine,
        run_in_order: RunInOrder,
        publish_dead_letters: PublishDeadLetters,
    ) -> None:
        self._stalls = stalls
        self._consumer = consumer
        self._engine = engine
        self._run_in_order = run_in_order
        self._publish = publish_dead_letters
        self._loop = BackgroundLoop("skip-requests", self._look, POLL_SECONDS)

    def wake(self) -> None:
        """A partition stalled: look for requests (every POLL_SECONDS while one is)."""
        if not self._loop.running:
            self._loop.start()
        self._loop.wake()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _look(self) -> None:
        if self._stalls.current():
            await self.handle_requests()

    async def handle_requests(self) -> None:
        async with self._engine.connect() as connection:
            requests = await pending_skips(connection)
        for request in requests:
            partition = TopicPartition(request.topic, request.partition)
            stall = self._stalls.get(partition)
            if stall is None:
                continue  # not stuck here: another replica's, or not stuck (yet)
            if _covers(stall, request.offset):
                await self._run_in_order(functools.partial(self._skip, request, stall))
            else:
                await self._finish(
                    request,
                    "refused",
                    f"{stall.describe()}; offset {request.offset} is not in that batch: "
                    f"ask to skip offset {stall.offset}",
                )

    async def _skip(self, request: SkipRequest, stall: Stall) -> None:
        consumer = self._consumer()
        partition = stall.partition
        if (
            consumer is None
            or self._stalls.get(partition) is not stall
            or partition not in consumer.assignment()
        ):
            return  # it moved to another replica meanwhile: the request stays pending
        past = stall.batch_next_offset if stall.batch_next_offset is not None else stall.offset + 1
        letters = _skip_dead_letters(request, stall, past)
        await self._publish(letters)
        consumer.seek(partition, past)
        await consumer.commit({partition: past})
        consumer.resume(partition)
        self._stalls.resolved(partition)
        logger.warning(
            "skipped a stalled partition's records on an operator's request",
            extra={
                "topic": partition.topic,
                "partition": partition.partition,
                "first_offset": stall.offset,
                "last_offset": past - 1,
                "request_id": request.request_id,
            },
        )
        await self._finish(
            request,
            "skipped",
            f"skipped offsets {stall.offset}..{past - 1} of {stall.label}; a dead letter says so",
            (stall.offset, past - 1),
        )

    async def _finish(
        self,
        request: SkipRequest,
        status: Any,
        outcome: str,
        skipped: tuple[int, int] | None = None,
    ) -> None:
        async with self._engine.begin() as connection:
            await finish_skip(connection, request.request_id, status, outcome, skipped)


def _skip_dead_letters(request: SkipRequest, stall: Stall, past: int) -> list[DeadLetter]:
    """What a skip records in the dead-letter topic: each of a write stall's decoded
    records whole, else one letter for the offsets that could not be decoded."""
    note = f" ({request.reason})" if request.reason else ""
    skipped_by = f"skipped by an operator (ml-analytics skip, request {request.request_id}{note})"
    if stall.unwritable:
        # Decoded records: each goes to the dead letters whole, nothing is lost.
        return [
            dead_letter_for(
                record,
                f"{skipped_by}: it could not be written ({stall.error})",
                datetime.now(UTC),
            )
            for record in stall.records
        ]
    return [
        DeadLetter(
            source_topic=stall.partition.topic,
            partition=stall.partition.partition,
            offset=stall.offset,
            last_offset=past - 1,
            key=None,
            value=None,
            error=(
                f"{skipped_by}: the records at offsets {stall.offset}..{past - 1} could "
                f"not be decoded ({stall.error}); they stay in the topic until its "
                "retention ends"
            ),
            failed_at=datetime.now(UTC),
        )
    ]


def _covers(stall: Stall, offset: int) -> bool:
    end = stall.batch_next_offset if stall.batch_next_offset is not None else stall.offset + 1
    return stall.offset <= offset < end
