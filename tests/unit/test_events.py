"""Validation of incoming events: what is accepted, and the reason given for what is not."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ml_analytics.events import (
    DEAD_LETTER_MAX_KEY_BYTES,
    DEAD_LETTER_MAX_VALUE_BYTES,
    MAX_QUANTITY_UNITS,
    MAX_STOCK_UNITS,
    DeadLetter,
    EventTimeWindow,
    InvalidEvent,
    StockLevel,
    Transaction,
    decode_event,
)

GOOD = {
    "event_id": "tx-1",
    "product_id": "SKU-42",
    "occurred_at": "2026-11-01T14:03:00Z",
    "quantity_units": 3,
}


def raw(**changes: object) -> bytes:
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_contract_example_transaction_is_accepted() -> None:
    transaction = decode_event(Transaction, raw())
    assert transaction.product_id == "SKU-42"
    assert transaction.quantity_units == 3
    assert transaction.occurred_at == datetime(2026, 11, 1, 14, 3, tzinfo=UTC)


def test_unknown_fields_are_ignored() -> None:
    assert decode_event(Transaction, raw(channel="web", extra={"a": 1})).event_id == "tx-1"


@pytest.mark.parametrize(
    ("occurred_at", "zone", "day"),
    [
        ("2026-11-01T23:30:00-05:00", "UTC", date(2026, 11, 2)),
        ("2026-11-01T23:30:00-05:00", "America/New_York", date(2026, 11, 1)),
        ("2026-07-01T00:30:00+01:00", "UTC", date(2026, 6, 30)),
        ("2026-07-01T00:30:00+01:00", "Europe/London", date(2026, 7, 1)),  # BST
        ("2026-11-01T00:30:00+01:00", "Europe/London", date(2026, 10, 31)),  # GMT again
        ("2026-11-01T23:59:59Z", "Asia/Tokyo", date(2026, 11, 2)),
        ("2026-11-01", "Asia/Tokyo", date(2026, 11, 1)),
        ("2026-11-01", "UTC", date(2026, 11, 1)),
    ],
)
def test_occurred_at_is_bucketed_into_a_business_day(
    occurred_at: str, zone: str, day: date
) -> None:
    transaction = decode_event(Transaction, raw(occurred_at=occurred_at))
    assert transaction.business_day(ZoneInfo(zone)) == day


def test_plain_date_stock_level_is_the_start_of_that_business_day() -> None:
    level = decode_event(
        StockLevel,
        json.dumps(
            {"event_id": "s", "product_id": "p", "as_of": "2026-11-01", "stock_units": 0}
        ).encode(),
    )
    zone = ZoneInfo("America/New_York")
    assert level.as_of_instant(zone) == datetime(2026, 11, 1, tzinfo=zone)
    assert level.lead_time_days is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "value is not valid JSON"),
        (b"\xff\xfe{}", "value is not valid UTF-8"),
        (b"", "value is empty"),
        (None, "value is empty"),
        (b"[1, 2]", "value must be a JSON object"),
        (b'"a string"', "value must be a JSON object"),
        (raw(event_id=...), "event_id: required field is missing"),
        (raw(product_id=...), "product_id: required field is missing"),
        (raw(occurred_at=...), "occurred_at: required field is missing"),
        (raw(quantity_units=...), "quantity_units: required field is missing"),
        (raw(event_id=""), "event_id: String should have at least 1 character"),
        (raw(product_id="x" * 129), "product_id: String should have at most 128 characters"),
        (raw(product_id="a\u0000b"), "product_id: must not contain the NUL character"),
        (raw(event_id=42), "event_id: Input should be a valid string"),
        (raw(quantity_units="3"), "quantity_units: Input should be a valid number"),
        (raw(quantity_units=True), "quantity_units: Input should be a valid number"),
        (raw(quantity_units=None), "quantity_units: Input should be a valid number"),
        (raw(quantity_units=-3), "quantity_units: Input should be greater than 0"),
        (raw(quantity_units=0), "quantity_units: Input should be greater than 0"),
        (raw(occurred_at="yesterday"), "occurred_at: is not an ISO-8601 datetime"),
        (raw(occurred_at="2026-02-30"), "occurred_at: is not a valid date"),
        (raw(occurred_at="2026-11-01T14:03:00"), "occurred_at: has no UTC offset"),
        (raw(occurred_at="20261101"), "occurred_at: is a date not written YYYY-MM-DD"),
        (raw(occurred_at="2026-W44-7"), "occurred_at: is a date not written YYYY-MM-DD"),
        (raw(occurred_at="20261101T140300"), "occurred_at: has no UTC offset"),
        (raw(occurred_at=1_700_000_000), "occurred_at: must be a string"),
        (
            raw(occurred_at="9999-12-31T23:00:00-05:00"),
            "occurred_at: is out of the representable range",
        ),
    ],
)
def test_bad_transaction_is_rejected_with_a_reason_naming_the_problem(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(Transaction, value)
    assert reason in str(caught.value)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_quantity_is_rejected(literal: bytes) -> None:
    value = raw(quantity_units=1).replace(b'"quantity_units": 1', b'"quantity_units": ' + literal)
    with pytest.raises(InvalidEvent, match="quantity_units: must be a finite number"):
        decode_event(Transaction, value)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"stock_units": -1}, "stock_units: Input should be greater than or equal to 0"),
        ({"lead_time_days": 366}, "lead_time_days: Input should be less than or equal to 365"),
        ({"lead_time_days": 2.5}, "lead_time_days: Input should be a valid integer"),
        ({"lead_time_days": "10"}, "lead_time_days: Input should be a valid integer"),
        ({"as_of": "soon"}, "as_of: is not an ISO-8601 datetime"),
    ],
)
def test_bad_stock_level_is_rejected_with_a_reason(changes: dict[str, object], reason: str) -> None:
    event = {
        "event_id": "s-1",
        "product_id": "p",
        "as_of": "2026-11-01T18:00:00Z",
        "stock_units": 5,
    }
    with pytest.raises(InvalidEvent) as caught:
        decode_event(StockLevel, json.dumps({**event, **changes}).encode())
    assert reason in str(caught.value)


def test_optional_stock_level_fields_sent_as_null_take_their_defaults() -> None:
    level = decode_event(
        StockLevel,
        b'{"event_id":"s","product_id":"p","as_of":"2026-11-01","stock_units":5,'
        b'"lead_time_days":null,"on_order_units":null,"order_multiple_units":null,'
        b'"target_service_level":null}',
    )
    assert (level.lead_time_days, level.on_order_units) == (None, 0.0)
    assert (level.order_multiple_units, level.target_service_level) == (None, None)
    with pytest.raises(InvalidEvent, match="on_order_units: Input should be greater than"):
        decode_event(
            StockLevel,
            b'{"event_id":"s","product_id":"p","as_of":"2026-11-01","stock_units":5,'
            b'"on_order_units":-1}',
        )


def test_stock_level_with_lead_time_and_zero_stock_is_accepted() -> None:
    level = decode_event(
        StockLevel,
        b'{"event_id":"s","product_id":"p","as_of":"2026-11-01T18:00:00+02:00",'
        b'"stock_units":0,"lead_time_days":0}',
    )
    assert level.stock_units == 0
    assert level.lead_time_days == 0
    assert level.as_of_instant(ZoneInfo("UTC")).utcoffset() == timedelta(hours=2)


def _letter(
    key: bytes | None, value: bytes | None, error: str = "value is not valid JSON"
) -> DeadLetter:
    return DeadLetter.for_record(
        topic="t",
        partition=0,
        offset=9,
        key=key,
        value=value,
        error=error,
        failed_at=datetime(2026, 11, 1, tzinfo=UTC),
    )


def test_dead_letter_keeps_non_utf8_bytes_as_base64() -> None:
    letter = _letter(b"\xffkey", b"\x00\xff", error="value is not valid UTF-8")
    assert letter.value == "AP8="
    assert letter.value_encoding == "base64"
    assert letter.key_encoding == "base64"
    text_letter = _letter(b"SKU", b"oops")
    assert (text_letter.key, text_letter.value, text_letter.value_encoding) == (
        "SKU",
        "oops",
        "utf-8",
    )


@pytest.mark.parametrize(
    "value",
    [
        b"\x01" * 180_000,  # valid UTF-8 that JSON escapes six-fold (\u0001)
        b"\xff" * 800_000,  # not UTF-8: base64
        ('"' * 300_000).encode(),  # escaped two-fold
    ],
    ids=["control-characters", "invalid-utf8", "quotes"],
)
def test_dead_letter_of_a_huge_value_is_cut_to_fit_the_producer_limit(value: bytes) -> None:
    letter = _letter(b"k" * 50_000, value)
    assert len(letter.model_dump_json().encode()) < 512 * 1024  # the producer's limit is 1 MiB
    assert len(letter.kafka_key() or b"") <= DEAD_LETTER_MAX_KEY_BYTES
    assert letter.value_truncated and letter.key_truncated
    assert letter.value_bytes == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.key_sha256 == hashlib.sha256(b"k" * 50_000).hexdigest()
    kept = base64.b64decode(letter.value) if letter.value_encoding == "base64" else letter.value
    assert value.startswith(kept.encode() if isinstance(kept, str) else kept)
    assert len(kept) == DEAD_LETTER_MAX_VALUE_BYTES
    assert f"cut to its first {DEAD_LETTER_MAX_VALUE_BYTES} of {len(value)} bytes" in letter.error


def test_dead_letter_cut_inside_a_character_stays_text() -> None:
    # "é" is two bytes: after one "a" the cut lands in the middle of one
    letter = _letter(None, b"a" + "é".encode() * DEAD_LETTER_MAX_VALUE_BYTES)
    assert letter.value_encoding == "utf-8"
    assert letter.value == "a" + "é" * (DEAD_LETTER_MAX_VALUE_BYTES // 2 - 1)


def test_small_dead_letter_is_kept_whole_and_says_its_length() -> None:
    letter = _letter(b"SKU", b"oops")
    assert (letter.value, letter.value_bytes, letter.value_truncated) == ("oops", 4, False)
    assert letter.value_sha256 is None and letter.kafka_key() == b"SKU"
    assert "cut" not in letter.error


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("quantity_units", 1e308, "less than or equal to 1000000000000"),
        ("quantity_units", MAX_QUANTITY_UNITS * 2, "less than or equal to"),
    ],
)
def test_quantities_past_the_bound_are_refused(field: str, value: float, reason: str) -> None:
    event = {"event_id": "e", "product_id": "p", "occurred_at": "2026-11-01", field: value}
    with pytest.raises(InvalidEvent) as caught:
        decode_event(Transaction, json.dumps(event).encode())
    assert reason in str(caught.value) and field in str(caught.value)


def test_stock_past_the_bound_is_refused() -> None:
    event = {"event_id": "e", "product_id": "p", "as_of": "2026-11-01", "stock_units": 1e300}
    with pytest.raises(InvalidEvent, match="stock_units"):
        decode_event(StockLevel, json.dumps(event).encode())
    decode_event(StockLevel, json.dumps({**event, "stock_units": MAX_STOCK_UNITS}).encode())


def test_event_time_window_names_the_field_and_its_bounds() -> None:
    window = EventTimeWindow.around(datetime(2026, 11, 28, 12, tzinfo=UTC), date(1970, 1, 1), 3)
    assert window.problem("occurred_at", date(2026, 12, 1)) is None
    assert window.problem("occurred_at", date(1970, 1, 1)) is None
    problem = window.problem("occurred_at", date(9999, 12, 31))
    assert problem == (
        "occurred_at: 9999-12-31 is outside the accepted dates 1970-01-01 .. 2026-12-01 "
        "(EVENT_TIME_EARLIEST, EVENT_TIME_MAX_FUTURE_DAYS)"
    )
    assert window.problem("as_of", date(1000, 1, 1)) is not None
