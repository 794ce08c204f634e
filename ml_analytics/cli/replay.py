"""Publish a transactions or stock-levels file (CSV or CSV.gz) to its topic.

The header says which: `event_id,product_id,occurred_at,quantity_units` goes to
the transactions topic; `event_id,product_id,as_of,stock_units` (and optionally `lead_time_days`,
`on_order_units`, `order_multiple_units`, `target_service_level`) to the
stock-levels topic. Each row becomes one JSON event keyed by product_id.
Values are published as they are: a row the service cannot accept becomes a
dead letter there, which is what a replay should show.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from faststream.kafka import KafkaBroker
from tqdm import tqdm

from ml_analytics.kafka import kafka_security
from ml_analytics.settings import Settings

TRANSACTION_COLUMNS = ("event_id", "product_id", "occurred_at", "quantity_units")
STOCK_LEVEL_COLUMNS = ("event_id", "product_id", "as_of", "stock_units")
OPTIONAL_STOCK_LEVEL_COLUMNS = (
    "lead_time_days",
    "on_order_units",
    "order_multiple_units",
    "target_service_level",
)

Kind = Literal["transactions", "stock_levels"]


@dataclass(frozen=True)
class ReplayResult:
    kind: Kind
    topic: str
    published: int
    seconds: float


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def detect_kind(columns: list[str]) -> Kind:
    if all(column in columns for column in TRANSACTION_COLUMNS):
        return "transactions"
    if all(column in columns for column in STOCK_LEVEL_COLUMNS):
        return "stock_levels"
    raise ValueError(
        f"unrecognised columns {columns}: expected {','.join(TRANSACTION_COLUMNS)} "
        f"or {','.join(STOCK_LEVEL_COLUMNS)}[,{','.join(OPTIONAL_STOCK_LEVEL_COLUMNS)}]"
    )


def _number(text: str) -> Any:
    """The JSON number a CSV cell holds, or the text itself when it is not one."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def row_to_event(kind: Kind, row: dict[str, str]) -> dict[str, Any]:
    if kind == "transactions":
        return {
            "event_id": row["event_id"],
            "product_id": row["product_id"],
            "occurred_at": row["occurred_at"],
            "quantity_units": _number(row["quantity_units"]),
        }
    event: dict[str, Any] = {
        "event_id": row["event_id"],
        "product_id": row["product_id"],
        "as_of": row["as_of"],
        "stock_units": _number(row["stock_units"]),
    }
    for optional in OPTIONAL_STOCK_LEVEL_COLUMNS:
        cell = (row.get(optional) or "").strip()
        if cell:
            event[optional] = _number(cell)
    return event


def read_events(path: Path) -> tuple[Kind, Iterator[dict[str, Any]]]:
    """The file's kind, and its rows as events (streamed, not loaded whole)."""
    handle = _open_text(path)
    reader = csv.DictReader(handle)
    kind = detect_kind(list(reader.fieldnames or []))

    def events() -> Iterator[dict[str, Any]]:
        with handle:
            for row in reader:
                yield row_to_event(kind, row)

    return kind, events()


def count_rows(path: Path) -> int:
    with _open_text(path) as handle:
        return max(sum(1 for _ in handle) - 1, 0)


def _event_time(event: dict[str, Any]) -> float | None:
    text = event.get("occurred_at") or event.get("as_of")
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


@dataclass
class _Pace:
    """Holds publishing back to `rate` events a second and to `speed` times event time."""

    rate: float | None
    speed: float | None
    started: float  # time.monotonic() when publishing began
    first_event_time: float | None = None

    async def wait_before(self, event: dict[str, Any], published: int) -> None:
        """Sleep until `event`, the one after `published` others, is due."""
        if self.speed:
            moment = _event_time(event)
            if moment is not None:
                if self.first_event_time is None:
                    self.first_event_time = moment
                wait = (moment - self.first_event_time) / self.speed - self._elapsed()
                if wait > 0:
                    await asyncio.sleep(wait)
        if self.rate:
            wait = published / self.rate - self._elapsed()
            if wait > 0:
                await asyncio.sleep(wait)

    def _elapsed(self) -> float:
        return time.monotonic() - self.started


async def replay_file(
    path: Path,
    settings: Settings,
    *,
    rate: float | None = None,
    speed: float | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> ReplayResult:
    """Publish the file's events; `rate` caps events per second, `speed` paces by event
    time (86400 = one day of history per second). Returns once every event is acked."""
    kind, events = read_events(path)
    topic = settings.transactions_topic if kind == "transactions" else settings.stock_levels_topic
    total = count_rows(path) if progress else None
    if limit is not None and total is not None:
        total = min(total, limit)
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-replay",
        security=kafka_security(settings),
        enable_idempotence=settings.kafka_enable_idempotence,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
    )
    await broker.connect()
    published = 0
    started = time.monotonic()
    pace = _Pace(rate, speed, started)
    pending: list[asyncio.Future[Any]] = []
    bar = tqdm(total=total, unit="ev", desc=f"replay {path.name} -> {topic}", disable=not progress)
    try:
        for event in events:
            if limit is not None and published >= limit:
                break
            await pace.wait_before(event, published)
            future = await broker.publish(
                json.dumps(event, separators=(",", ":")).encode(),
                topic=topic,
                key=str(event["product_id"]).encode(),
                headers={"content-type": "application/json"},
                no_confirm=True,
            )
            pending.append(future)
            published += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                bar.update(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        bar.update(len(pending))
    finally:
        bar.close()
        await broker.stop()
    return ReplayResult(kind, topic, published, time.monotonic() - started)


def replay_command(args: argparse.Namespace) -> int:
    """`ml-analytics replay PATH ...`: each file to its topic, one after the other."""
    from ml_analytics.cli import run_async

    missing = [str(path) for path in args.paths if not path.is_file()]
    if missing:
        print(f"replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = Settings()
    for path in args.paths:
        try:
            result = run_async(
                replay_file(
                    path,
                    settings,
                    rate=args.rate,
                    speed=args.speed,
                    limit=args.limit,
                    progress=not args.no_progress,
                )
            )
        except ValueError as error:
            print(f"replay: {path}: {error}", file=sys.stderr)
            return 2
        rate = result.published / result.seconds if result.seconds else 0.0
        print(
            f"replay: published {result.published} {result.kind.replace('_', '-')} events to "
            f"{result.topic} in {result.seconds:.1f} s ({rate:,.0f}/s)",
            file=sys.stderr,
        )
    return 0
