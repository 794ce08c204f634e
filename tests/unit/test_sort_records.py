"""Sorting a consumed batch into rows and dead letters (no services needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime

from ml_analytics.services.ingestion.sort import sort_records
from ml_analytics.topics import INPUT_TOPICS

TX, SL = "in.tx", "in.sl"
ROUTES = {TX: INPUT_TOPICS[0], SL: INPUT_TOPICS[1]}
NOW = datetime(2026, 11, 27, tzinfo=UTC)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def tx(event_id: str, quantity: float = 1, occurred_at: str = "2026-11-01T10:00:00Z") -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "product_id": "p",
            "occurred_at": occurred_at,
            "quantity_units": quantity,
        }
    ).encode()


def sort(records: list[Record]):  # type: ignore[no-untyped-def]
    return sort_records(records, routes=ROUTES, zone=UTC, failed_at=NOW)


def test_repeated_event_id_within_a_batch_is_kept_once_whatever_its_day() -> None:
    days = ["2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-01"]
    batch = sort(
        [Record(TX, 0, i, b"p", tx("same", occurred_at=day)) for i, day in enumerate(days)]
    )
    assert [row.event_id for row in batch.transactions] == ["same"]
    assert batch.transactions[0].business_day == date(2026, 11, 1)  # the first one wins
    assert batch.repeated_in_batch == 2 and batch.dead_letters == []


def test_an_event_id_reused_for_another_event_in_a_batch_is_a_dead_letter() -> None:
    other = json.dumps({"event_id": "same", "product_id": "q", "occurred_at": "2026-11-01",
                        "quantity_units": 1}).encode()  # fmt: skip
    batch = sort(
        [
            Record(TX, 0, 0, b"p", tx("same")),
            Record(TX, 0, 1, b"p", tx("same", quantity=5)),
            Record(TX, 0, 2, b"q", other),
        ]
    )
    assert [(row.product_id, row.quantity_units) for row in batch.transactions] == [("p", 1)]
    assert [letter.offset for letter in batch.dead_letters] == [1, 2]
    assert "names two events" in batch.dead_letters[0].error
    assert "'p' with 5 units" in batch.dead_letters[0].error
    assert "'q' with 1 units" in batch.dead_letters[1].error
    assert batch.repeated_in_batch == 0


def test_same_event_id_on_both_topics_is_not_a_repeat() -> None:
    level = b'{"event_id":"e","product_id":"p","as_of":"2026-11-01","stock_units":4}'
    batch = sort([Record(TX, 0, 0, b"p", tx("e")), Record(SL, 0, 0, b"p", level)])
    assert len(batch.transactions) == 1
    assert len(batch.stock_snapshots) == 1
    assert batch.repeated_in_batch == 0


def test_bad_record_becomes_a_dead_letter_with_its_position_and_bytes() -> None:
    batch = sort(
        [
            Record(TX, 2, 40, b"p", tx("ok-1")),
            Record(TX, 2, 41, b"p", b'{"event_id": "bad"}'),
            Record(TX, 2, 42, b"p", tx("ok-2", occurred_at="2026-11-02")),
        ]
    )
    assert [row.event_id for row in batch.transactions] == ["ok-1", "ok-2"]
    assert [row.business_day for row in batch.transactions] == [
        date(2026, 11, 1),
        date(2026, 11, 2),
    ]
    (letter,) = batch.dead_letters
    assert (letter.source_topic, letter.partition, letter.offset, letter.key) == (TX, 2, 41, "p")
    assert letter.value == '{"event_id": "bad"}'
    assert "product_id: required field is missing" in letter.error
    assert letter.failed_at == NOW


def test_record_from_an_unexpected_topic_is_a_dead_letter() -> None:
    batch = sort([Record("elsewhere", 0, 0, None, tx("x"))])
    assert batch.transactions == []
    assert "unexpected topic 'elsewhere'" in batch.dead_letters[0].error


def test_event_time_that_overflows_in_the_business_zone_is_a_dead_letter() -> None:
    from zoneinfo import ZoneInfo

    late = tx("edge", occurred_at="9999-12-31T23:30:00+00:00")  # valid in UTC, not in Tokyo
    batch = sort_records(
        [Record(TX, 0, 0, b"p", late), Record(TX, 0, 1, b"p", tx("fine"))],
        routes=ROUTES,
        zone=ZoneInfo("Asia/Tokyo"),
        failed_at=NOW,
    )
    assert [row.event_id for row in batch.transactions] == ["fine"]
    assert "cannot be processed" in batch.dead_letters[0].error


def test_events_outside_the_accepted_dates_are_dead_letters_and_the_rest_counted() -> None:
    from ml_analytics.events import EventTimeWindow

    window = EventTimeWindow(date(1970, 1, 1), date(2026, 11, 30))
    level = b'{"event_id":"s","product_id":"p","as_of":"9999-12-31","stock_units":4}'
    batch = sort_records(
        [
            Record(TX, 0, 0, b"p", tx("far", occurred_at="9999-12-31")),
            Record(TX, 0, 1, b"p", tx("year-one", occurred_at="0001-01-01")),
            Record(TX, 0, 2, b"p", tx("medieval", occurred_at="1000-01-01T00:00:00Z")),
            Record(SL, 0, 0, b"p", level),
            Record(TX, 0, 3, b"p", tx("fine", occurred_at="2026-11-30T23:00:00Z")),
        ],
        routes=ROUTES,
        zone=UTC,
        failed_at=NOW,
        window=window,
    )
    assert [row.event_id for row in batch.transactions] == ["fine"]
    assert batch.stock_snapshots == []
    errors = [letter.error for letter in batch.dead_letters]
    assert errors[0].startswith("occurred_at: 9999-12-31 is outside the accepted dates")
    assert errors[1].startswith("occurred_at: 0001-01-01 is outside")
    assert errors[2].startswith("occurred_at: 1000-01-01 is outside")
    assert errors[3].startswith("as_of: 9999-12-31 is outside")
    assert all("1970-01-01 .. 2026-11-30" in error for error in errors)
