"""The topics, in one table: each input topic's schema, the handler that turns its event
into a row, and the storage call that writes the rows; each output topic's message.
Names and partition counts come from topics.yaml (overridable by settings); the
subscriber, the publishers and /asyncapi are built from this table.

Adding a topic: its entry in topics.yaml, an entry here, and its handler (and for an
input topic, its storage write). See the recipe in docs/development.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel

from ml_analytics.events import DeadLetter, StockLevel, StockoutRisk, Transaction
from ml_analytics.services.ingestion.sort import SortContext, stock_snapshot_row, transaction_row
from ml_analytics.services.ingestion.write import (
    BatchOutcome,
    WriteOptions,
    write_stock_levels,
    write_transactions,
)
from ml_analytics.settings import Settings


@dataclass(frozen=True)
class InputTopic:
    role: str  # its key in topics.yaml
    event: type[BaseModel]  # the contract's schema of its messages
    handle: Callable[[Any, SortContext], Any]  # event -> the row its write takes
    write: Callable[[asyncpg.Connection, list[Any], WriteOptions], Awaitable[BatchOutcome]]
    description: str


@dataclass(frozen=True)
class OutputTopic:
    role: str
    message: type[BaseModel]
    description: str


INPUT_TOPICS = (
    InputTopic(
        "transactions",
        Transaction,
        transaction_row,
        write_transactions,
        "Units used, sold or shipped: counted once each into the daily aggregates.",
    ),
    InputTopic(
        "stock_levels",
        StockLevel,
        stock_snapshot_row,
        write_stock_levels,
        "Units on hand: the newest as_of is the current stock; each one reassesses risk.",
    ),
)
OUTPUT_TOPICS = (
    OutputTopic(
        "stockout_risk",
        StockoutRisk,
        "A product's stockout risk, published when its level changes.",
    ),
    OutputTopic(
        "dead_letter",
        DeadLetter,
        "A message that could not be processed, with the reason (or records skipped).",
    ),
)


def input_routes(settings: Settings) -> dict[str, InputTopic]:
    """Each input topic by its name (as the settings name it)."""
    return {settings.topic_name(topic.role): topic for topic in INPUT_TOPICS}
