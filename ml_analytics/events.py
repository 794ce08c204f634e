"""The contract's messages as pydantic models, and their decoding from Kafka bytes.

Incoming events are validated strictly: a wrong type is an error, not a coercion,
because a quantity that arrives as the string "3" means the producer is broken
and the operator should hear about it (through the dead-letter topic).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)

# Checks run inside pydantic-core where they can (lengths, the NUL pattern,
# finiteness): validation is on the ingestion hot path, ~2 µs an event.
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold U+0000
_PLAIN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _event_time(value: object) -> datetime | date:
    """An ISO-8601 datetime with a UTC offset, or a plain date `YYYY-MM-DD`."""
    if not isinstance(value, str):
        raise ValueError("must be a string: an ISO-8601 datetime with offset, or YYYY-MM-DD")
    if len(value) == 10 and _PLAIN_DATE.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError as error:
            raise ValueError(f"is not a valid date: {error}") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            "is not an ISO-8601 datetime with offset (e.g. 2026-11-01T14:03:00Z) "
            "or a date YYYY-MM-DD"
        ) from None
    if moment.tzinfo is None:  # fromisoformat gives fixed offsets: an offset or none
        if "T" not in value.upper() and " " not in value:  # 20261101, 2026-W44-7: a date
            raise ValueError("is a date not written YYYY-MM-DD; send YYYY-MM-DD (e.g. 2026-11-01)")
        raise ValueError("has no UTC offset; add one (e.g. Z or +01:00) or send a plain date")
    if moment.year in (1, 9999):  # only there can a shift to another zone overflow
        try:
            moment.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of the representable range") from None
    return moment


Identifier = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=128, pattern=_NO_NUL)
]
EventTime = Annotated[
    datetime | date,
    PlainValidator(_event_time, json_schema_input_type=str),
]
Units = Annotated[float, Strict(), Field(allow_inf_nan=False)]

# The largest quantities accepted, on the topics as over HTTP: far beyond any real
# stock or order, and small enough that no sum of them over a product's days can
# leave the range of a float.
MAX_QUANTITY_UNITS = 1e12
MAX_STOCK_UNITS = 1e15
# A target service level is a quantile of the predictive distribution: below the
# median it is not a service level; 0.999 is as far as a few hundred paths reach.
MIN_SERVICE_LEVEL = 0.5
MAX_SERVICE_LEVEL = 0.999


@dataclass(frozen=True, slots=True)
class EventTimeWindow:
    """The business days an event may fall on: from EVENT_TIME_EARLIEST to the wall
    clock plus EVENT_TIME_MAX_FUTURE_DAYS. A date outside it is a producer's mistake
    (9999-12-31 as "no date", a year typed wrong), and one such event would otherwise
    stretch its product's history over centuries."""

    earliest: date
    latest: date

    @classmethod
    def around(cls, now: datetime, earliest: date, max_future_days: int) -> EventTimeWindow:
        return cls(earliest, now.date() + timedelta(days=max_future_days))

    def contains(self, day: date) -> bool:
        return self.earliest <= day <= self.latest

    def problem(self, field: str, day: date) -> str | None:
        """None when `day` is inside the window, else the reason, naming `field`."""
        if self.contains(day):
            return None
        return (
            f"{field}: {day.isoformat()} is outside the accepted dates {self.earliest.isoformat()}"
            f" .. {self.latest.isoformat()} (EVENT_TIME_EARLIEST, EVENT_TIME_MAX_FUTURE_DAYS)"
        )


class Transaction(BaseModel):
    """Units of one product used, sold or shipped at one moment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Identifier
    product_id: Identifier
    occurred_at: EventTime
    quantity_units: Annotated[Units, Field(gt=0, le=MAX_QUANTITY_UNITS)]

    def business_day(self, zone: tzinfo) -> date:
        """The day this transaction counts for, in the business time zone."""
        return business_day(self.occurred_at, zone)

    def identity(self) -> tuple[str, float]:
        """What makes it this event and no other: two events with one event_id and the
        same identity are one event published twice (whatever its day says)."""
        return (self.product_id, self.quantity_units)


class StockLevel(BaseModel):
    """Units on hand of one product at `as_of`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Identifier
    product_id: Identifier
    as_of: EventTime
    stock_units: Annotated[Units, Field(ge=0, le=MAX_STOCK_UNITS)]
    lead_time_days: Annotated[StrictInt, Field(ge=0, le=365)] | None = None
    # Additions (replenishment): units ordered and not yet received, the multiple
    # orders are placed in, and the product's own target service level.
    on_order_units: Annotated[Units, Field(ge=0, le=MAX_STOCK_UNITS)] = 0.0
    order_multiple_units: Annotated[Units, Field(gt=0, le=MAX_STOCK_UNITS)] | None = None
    target_service_level: (
        Annotated[Units, Field(ge=MIN_SERVICE_LEVEL, le=MAX_SERVICE_LEVEL)] | None
    ) = None

    @field_validator("on_order_units", mode="before")
    @classmethod
    def _null_is_none_on_order(cls, value: object) -> object:
        """An optional field sent as null: its default, as when it is left out."""
        return 0.0 if value is None else value

    def identity(self) -> tuple[str, float]:
        """What makes it this stock level and no other (see Transaction.identity)."""
        return (self.product_id, self.stock_units)

    def as_of_instant(self, zone: tzinfo) -> datetime:
        """`as_of` as an aware datetime; a plain date is the start of that business day."""
        return event_instant(self.as_of, zone)


def business_day(moment: datetime | date, zone: tzinfo) -> date:
    if isinstance(moment, datetime):
        return moment.astimezone(zone).date()
    return moment


def event_instant(moment: datetime | date, zone: tzinfo) -> datetime:
    """An event time as an instant; a plain date is the start of that business day."""
    if isinstance(moment, datetime):
        return moment
    return datetime(moment.year, moment.month, moment.day, tzinfo=zone)


class ModelInfo(BaseModel):
    name: str
    trained_at: datetime
    training_days: int
    mape: float | None = None
    rmse: float | None = None
    # Additions: 0.18 is "18% better than the 28-day moving average" on the error of
    # 28-day totals, over `skill_backtests` backtests; a combination's members.
    skill_vs_moving_average: float | None = None
    skill_backtests: int = 0
    weights: dict[str, float] | None = None


class StockoutRisk(BaseModel):
    """The risk that a product runs out within its risk window (outgoing)."""

    event_id: str
    product_id: str
    generated_at: datetime
    as_of: datetime
    current_stock_units: float
    risk_window_days: int
    risk_level: Literal["high", "medium", "low"]
    stockout_probability: float = Field(ge=0, le=1)
    predicted_stockout_date: date | None
    days_until_stockout: int | None
    confidence: float = Field(ge=0, le=1)
    model: ModelInfo
    # Additions (replenishment, see models/replenishment.py): what to order, by when.
    target_service_level: float | None = None
    reorder_point_units: float | None = None
    order_up_to_units: float | None = None
    recommended_order_units: float | None = None
    order_by_date: date | None = None
    # Addition (demand, not sales): estimated unmet demand over the last 28 complete
    # days, from the days the shelf was empty (models/censoring.py).
    lost_sales_units_28d: float | None = None


# A dead letter always fits the producer's request limit (1 MiB by default): the
# original key and value are kept up to these sizes and cut beyond, with the
# original's length and sha256. Escaped as JSON text, a cut value can grow at most
# six-fold (control characters become \\u0001), so the letter stays under 512 KiB.
DEAD_LETTER_MAX_VALUE_BYTES = 64 * 1024
DEAD_LETTER_MAX_KEY_BYTES = 4 * 1024
DEAD_LETTER_MAX_ERROR_CHARS = 2000


class DeadLetter(BaseModel):
    """A message that could not be processed, with the reason (outgoing)."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    key_encoding: Literal["utf-8", "base64"] = "utf-8"
    value: str | None
    value_encoding: Literal["utf-8", "base64"] = "utf-8"
    error: str
    failed_at: datetime
    value_bytes: int | None = Field(
        default=None, description="Length of the original value in bytes (null: no value)"
    )
    value_truncated: bool = Field(
        default=False,
        description=f"The value holds only the first {DEAD_LETTER_MAX_VALUE_BYTES} bytes",
    )
    value_sha256: str | None = Field(
        default=None, description="sha256 of the whole original value, when cut"
    )
    key_truncated: bool = False
    key_sha256: str | None = None
    last_offset: int | None = Field(
        default=None,
        description="For records skipped by an operator (ml-analytics skip): the last offset "
        "skipped; `offset` is the first. Their bytes stay in the source topic until its "
        "retention ends.",
    )

    @classmethod
    def for_record(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        error: str,
        failed_at: datetime,
    ) -> DeadLetter:
        key_kept, key_sha256 = _cut(key, DEAD_LETTER_MAX_KEY_BYTES)
        value_kept, value_sha256 = _cut(value, DEAD_LETTER_MAX_VALUE_BYTES)
        key_text, key_encoding = _as_text(key_kept)
        value_text, value_encoding = _as_text(value_kept)
        if len(error) > DEAD_LETTER_MAX_ERROR_CHARS:
            error = error[: DEAD_LETTER_MAX_ERROR_CHARS - 3] + "..."
        if value_sha256 is not None:
            assert value is not None
            error += (
                f" (the value is cut to its first {DEAD_LETTER_MAX_VALUE_BYTES} of "
                f"{len(value)} bytes; value_sha256 is the whole value's)"
            )
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=key_text,
            key_encoding=key_encoding,
            value=value_text,
            value_encoding=value_encoding,
            error=error,
            failed_at=failed_at,
            value_bytes=None if value is None else len(value),
            value_truncated=value_sha256 is not None,
            value_sha256=value_sha256,
            key_truncated=key_sha256 is not None,
            key_sha256=key_sha256,
        )

    def kafka_key(self) -> bytes | None:
        """The key to publish the letter with: the original's (as kept)."""
        if self.key is None:
            return None
        if self.key_encoding == "base64":
            return base64.b64decode(self.key)
        return self.key.encode()


def _cut(raw: bytes | None, limit: int) -> tuple[bytes | None, str | None]:
    """`raw` up to `limit` bytes, and the sha256 of the whole when it was cut."""
    if raw is None or len(raw) <= limit:
        return raw, None
    kept = raw[:limit]
    try:
        kept.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason == "unexpected end of data":  # a character cut in two: drop its start
            kept = kept[: error.start]
    return kept, hashlib.sha256(raw).hexdigest()


def _as_text(raw: bytes | None) -> tuple[str | None, Literal["utf-8", "base64"]]:
    if raw is None:
        return None, "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


EventT = TypeVar("EventT", bound=BaseModel)


class InvalidEvent(ValueError):
    """An incoming message that does not satisfy the contract; `str()` is the reason."""


def decode_event(model: type[EventT], raw: bytes | None) -> EventT:
    """Validate one Kafka value against `model`, or raise InvalidEvent naming the problem."""
    if raw is None or raw == b"":
        raise InvalidEvent(
            "value is empty (a tombstone or an empty message); expected a JSON object"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidEvent(
            f"value is not valid UTF-8 (byte {error.start}): {error.reason}"
        ) from None
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        raise InvalidEvent(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """One human-readable line per problem, each naming the field."""
    return describe_errors(error.errors(include_url=False))


def describe_errors(items: Iterable[Mapping[str, Any]], skip: Collection[str] = ()) -> str:
    """pydantic's error items as one line, each naming its field; location parts in
    `skip` (such as FastAPI's "body") are left out of the field names."""
    problems: list[str] = []
    for item in items:
        kind = item["type"]
        if kind == "json_invalid":
            problems.append(f"value is not valid JSON: {item['ctx'].get('error', item['msg'])}")
            continue
        field = ".".join(str(part) for part in item["loc"] if part not in skip) or "value"
        message = item["msg"].removeprefix("Value error, ")
        if kind == "string_pattern_mismatch":
            message = "must not contain the NUL character (U+0000)"
        elif kind == "finite_number":
            message = "must be a finite number"
        if kind == "missing":
            problems.append(f"{field}: required field is missing")
        elif kind in {"model_type", "model_attributes_type", "dict_type"}:
            problems.append(f"value must be a JSON object, got {_short(item['input'])}")
        else:
            problems.append(f"{field}: {message} (got {_short(item['input'])})")
    return "; ".join(problems)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
