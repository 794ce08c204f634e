"""`ml-analytics watch`: follow the stockout-risk topic and print each event."""

from __future__ import annotations

import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer

from ml_analytics.kafka import kafka_client_options
from ml_analytics.settings import Settings


def describe(event: dict[str, Any]) -> str:
    """One readable line for a StockoutRisk event."""
    when = (
        f"out in {event['days_until_stockout']} d ({event['predicted_stockout_date']})"
        if event.get("days_until_stockout") is not None
        else "no stockout within the horizon"
    )
    return (
        f"{event['generated_at'][:19]}  {event['product_id']:<14} {event['risk_level'].upper():<6} "
        f"p={event['stockout_probability']:.2f}  {when}  stock {event['current_stock_units']:g} "
        f"as of {event['as_of'][:16]}  window {event['risk_window_days']} d  "
        f"confidence {event['confidence']:.2f}"
    )


async def watch_risk_events(settings: Settings, *, as_json: bool = False) -> None:
    consumer = AIOKafkaConsumer(
        settings.stockout_risk_topic,
        **kafka_client_options(settings, "watch"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    print(
        f"watching {settings.stockout_risk_topic} on {settings.kafka_bootstrap_servers}",
        file=sys.stderr,
        flush=True,
    )
    try:
        async for record in consumer:
            try:
                event = json.loads(record.value)
                print(json.dumps(event) if as_json else describe(event), flush=True)
            except (ValueError, KeyError, TypeError) as error:
                print(f"(unreadable event at offset {record.offset}: {error})", flush=True)
    finally:
        await consumer.stop()
