"""The guard against undecodable record batches, on real batches through aiokafka's
own fetcher classes (no broker): what it reports, what it delivers, and that a
consumer that does not claim a stall still gets aiokafka's error."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import aiokafka.codec
import aiokafka.consumer.fetcher as fetcher
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from ml_analytics.adapters import aiokafka_fetcher
from ml_analytics.consumers.stalls import Stall, stall_of

PARTITION = TopicPartition("in.tx", 3)


def batch(base_offset: int, count: int, codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(count):
        builder.append(i, timestamp=None, key=None, value=b"v%d" % (base_offset + i), headers=[])
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base_offset)  # the base offset is outside the CRC
    return bytes(raw)


def corrupted(raw: bytes) -> bytes:
    broken = bytearray(raw)
    broken[-3] ^= 0xFF  # one byte of the last record: the CRC no longer matches
    return bytes(broken)


@pytest.fixture
def claimed() -> Iterator[list[Stall]]:
    found: list[Stall] = []

    def claim(batch: aiokafka_fetcher.UndecodableBatch) -> bool:
        found.append(stall_of(batch))
        return True

    aiokafka_fetcher.claim_undecodable_batches(claim)
    yield found
    aiokafka_fetcher.release_undecodable_batches(claim)


def consume(data: bytes, fetch_offset: int = 0) -> tuple[list[int], int]:
    """The offsets delivered from `data`, and where the position stands after."""
    records = fetcher.PartitionRecords(
        PARTITION, MemoryRecords(data), [], fetch_offset, None, None, True, 0
    )
    offsets = [record.offset for record in records]
    return offsets, records.next_fetch_offset


def test_a_corrupt_batch_ends_the_partition_s_records_and_is_reported(claimed: list[Stall]) -> None:
    offsets, position = consume(batch(0, 3) + corrupted(batch(3, 4)) + batch(7, 2))
    assert offsets == [0, 1, 2]  # what came before it is delivered
    assert position == 3  # and the consumer stands on the bad batch
    (stall,) = claimed
    assert (stall.partition, stall.offset, stall.batch_next_offset) == (PARTITION, 3, 7)
    assert stall.reason == "CorruptRecordException"
    assert stall.describe().startswith("in.tx[3] stuck at offset 3 (the batch ends at offset 6)")


def test_a_batch_without_its_codec_is_reported_from_the_middle_of_it(
    claimed: list[Stall], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = batch(10, 5, codec=3)  # lz4
    monkeypatch.setattr(aiokafka.codec, "has_lz4", lambda: False)
    offsets, position = consume(data, fetch_offset=12)  # Kafka returns the whole batch
    assert offsets == [] and position == 12
    (stall,) = claimed
    assert (stall.offset, stall.batch_next_offset) == (12, 15)
    assert stall.error == "UnsupportedCodecError: Libraries for lz4 compression codec not found"


def test_a_stall_no_consumer_claims_raises_as_aiokafka_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aiokafka_fetcher.claim_undecodable_batches(lambda batch: False)
    monkeypatch.setattr(aiokafka_fetcher, "_claimants", [lambda batch: False])
    with pytest.raises(CorruptRecordException):
        consume(batch(0, 2) + corrupted(batch(2, 2)))
    monkeypatch.setattr(aiokafka.codec, "has_zstd", lambda: False)
    with pytest.raises(UnsupportedCodecError):
        consume(batch(0, 2, codec=4))


def test_good_batches_pass_through_the_guard_unchanged(claimed: list[Stall]) -> None:
    offsets, position = consume(batch(0, 3) + batch(3, 4, codec=4) + batch(7, 2, codec=2))
    assert offsets == list(range(9)) and position == 9
    assert claimed == []
