"""Ingestion's writes: idempotent batches of events into the ledger and the aggregates.

A batch is written in one transaction: the event ids go into a ledger with
`ON CONFLICT DO NOTHING`, and only the rows that ledger insert returns reach the
aggregates. That is what makes a redelivered or re-published event count once.

The two batch writes run on the pooled connection's asyncpg driver with array
parameters (`unnest`): measured here, that is ~30% faster than the same statement
through SQLAlchemy's parameter handling, and ingestion is the hot path. Every
other query goes through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

import asyncpg

from ml_analytics.storage.demand import STOCK_COLUMNS, StockSnapshot


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more per event
class TransactionRow:
    event_id: str
    product_id: str
    business_day: date
    quantity_units: float
    # The instant it happened (a plain date: the start of its day in the business zone);
    # None: the start of `business_day` in UTC.
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    """An event whose event_id was first counted for another event: its row's index in
    the write and what the first one was."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one write of events changed: how many were new, the products they changed
    (with new demand for transactions, with a new current stock for stock levels), and
    the events that reuse another event's id."""

    new_events: int
    products_changed: list[str]
    conflicts: list[Conflict] = field(default_factory=list)


# How long a product's newest event time stays its evidence for the clock when what
# arrives after it is older (settings.CLOCK_EVIDENCE_SECONDS).
DEFAULT_EVIDENCE_SECONDS = 86400.0

_INSERT_TRANSACTIONS = """
WITH incoming AS (
    SELECT * FROM unnest(
        CAST($1 AS text[]), CAST($2 AS text[]),
        CAST($3 AS date[]), CAST($4 AS float8[]), CAST($5 AS timestamptz[])
    ) AS t(event_id, product_id, business_day, quantity_units, occurred_at)
),
new_events AS (
    INSERT INTO transaction_events (event_id, product_id, business_day, quantity_units)
    SELECT event_id, product_id, business_day, quantity_units::numeric FROM incoming
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, product_id, business_day, quantity_units
),
per_day AS (
    SELECT product_id, business_day,
           sum(quantity_units) AS quantity_units, count(*) AS transaction_count
    FROM new_events GROUP BY product_id, business_day
),
per_product AS (
    SELECT n.product_id, min(n.business_day) AS first_day, max(n.business_day) AS last_day,
           sum(n.quantity_units) AS quantity_units, count(*) AS transaction_count,
           max(i.occurred_at) AS event_time_at
    FROM new_events n JOIN incoming i USING (event_id)
    GROUP BY n.product_id
),
days_written AS (
    INSERT INTO daily_demand
        (product_id, business_day, quantity_units, transaction_count, updated_at)
    SELECT product_id, business_day, quantity_units, transaction_count, now() FROM per_day
    ORDER BY product_id, business_day
    ON CONFLICT (product_id, business_day) DO UPDATE SET
        quantity_units = daily_demand.quantity_units + EXCLUDED.quantity_units,
        transaction_count = daily_demand.transaction_count + EXCLUDED.transaction_count,
        updated_at = EXCLUDED.updated_at
    RETURNING 1
),
products_written AS (
    INSERT INTO products (product_id, first_day, last_day, total_units, transaction_count,
                          data_updated_at, event_time_at, event_time_arrived_at)
    SELECT product_id, first_day, last_day, quantity_units, transaction_count, now(),
           event_time_at, now()
    FROM per_product ORDER BY product_id
    ON CONFLICT (product_id) DO UPDATE SET
        first_day = LEAST(products.first_day, EXCLUDED.first_day),
        last_day = GREATEST(products.last_day, EXCLUDED.last_day),
        total_units = products.total_units + EXCLUDED.total_units,
        transaction_count = products.transaction_count + EXCLUDED.transaction_count,
        data_updated_at = EXCLUDED.data_updated_at,
        -- The clock's evidence: the product's newest event time; one that arrived more
        -- than $6 seconds ago gives way to what arrives now (an outlier is forgotten).
        event_time_at = CASE WHEN products.event_time_at >= EXCLUDED.event_time_at
                                 AND products.event_time_arrived_at
                                     >= now() - make_interval(secs => $6)
                             THEN products.event_time_at ELSE EXCLUDED.event_time_at END,
        event_time_arrived_at = CASE WHEN products.event_time_at >= EXCLUDED.event_time_at
                                 AND products.event_time_arrived_at
                                     >= now() - make_interval(secs => $6)
                                     THEN products.event_time_arrived_at
                                     ELSE EXCLUDED.event_time_arrived_at END
    RETURNING product_id
)
SELECT (SELECT count(*) FROM new_events) AS new_events,
       (SELECT count(*) FROM days_written) AS days_written,
       ARRAY(SELECT product_id FROM products_written ORDER BY product_id) AS products
"""

# Events not new whose first copy was another event: another product or quantity.
_TRANSACTION_CONFLICTS = """
SELECT i.position, e.product_id, e.business_day, e.quantity_units::float8 AS quantity_units,
       e.ingested_at
FROM unnest(CAST($1 AS text[]), CAST($2 AS text[]), CAST($3 AS float8[]))
     WITH ORDINALITY AS i(event_id, product_id, quantity_units, position)
JOIN transaction_events e USING (event_id)
WHERE e.product_id <> i.product_id OR e.quantity_units <> i.quantity_units::numeric
ORDER BY i.position
"""


def _start_of_day(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


async def record_transactions(
    connection: asyncpg.Connection,
    rows: Sequence[TransactionRow],
    evidence_seconds: float = DEFAULT_EVIDENCE_SECONDS,
) -> Recorded:
    """Count the transactions not seen before (by event_id, whatever their day) into
    the daily aggregates; a transaction whose event_id was first counted for another
    product or quantity is a conflict, counted nowhere.

    `rows` must not repeat an event_id (the caller sorts in-batch repeats out).
    """
    if not rows:
        return Recorded(0, [])
    event_ids = [row.event_id for row in rows]
    products = [row.product_id for row in rows]
    quantities = [row.quantity_units for row in rows]
    record = await connection.fetchrow(
        _INSERT_TRANSACTIONS,
        event_ids,
        products,
        [row.business_day for row in rows],
        quantities,
        [row.occurred_at or _start_of_day(row.business_day) for row in rows],
        float(evidence_seconds),
    )
    assert record is not None
    new_events = int(record["new_events"])
    conflicts: list[Conflict] = []
    if new_events < len(rows):  # some were seen before: the same events, or others?
        for first in await connection.fetch(
            _TRANSACTION_CONFLICTS, event_ids, products, quantities
        ):
            row = rows[first["position"] - 1]
            conflicts.append(
                Conflict(
                    first["position"] - 1,
                    f"event_id: {row.event_id!r} was first counted for another event "
                    f"(product_id {first['product_id']!r}, quantity_units "
                    f"{first['quantity_units']:g}, day {first['business_day'].isoformat()}, "
                    f"arrived {first['ingested_at'].isoformat(timespec='seconds')}); this one "
                    f"has product_id {row.product_id!r}, quantity_units {row.quantity_units:g}: "
                    "an event_id must name one event, so this one is not counted",
                )
            )
    return Recorded(new_events, list(record["products"]), conflicts)


# Products whose risk is to be assessed, upserted in the statement (or transaction)
# that changed them: a request while one is pending bumps `requests`, so an assessment
# that read the older state does not take the newer request away (services/risk.py).
REQUEST_ASSESSMENTS = """
    INSERT INTO pending_assessments (product_id, requested_at)
    SELECT product_id, now() FROM ({products}) AS requested ORDER BY product_id
    ON CONFLICT (product_id) DO UPDATE SET
        requests = pending_assessments.requests + 1,
        requested_at = EXCLUDED.requested_at,
        attempts = 0, not_before = EXCLUDED.requested_at, last_error = NULL
    RETURNING 1"""

_INSERT_STOCK_SNAPSHOTS = f"""
WITH incoming AS (
    SELECT * FROM unnest(
        CAST($1 AS text[]), CAST($2 AS text[]),
        CAST($3 AS timestamptz[]), CAST($4 AS float8[]),
        CAST($5 AS integer[]), CAST($6 AS float8[]), CAST($7 AS float8[]), CAST($8 AS float8[])
    ) AS t(event_id, product_id, as_of, {STOCK_COLUMNS})
),
new_snapshots AS (
    INSERT INTO stock_snapshots (event_id, product_id, as_of, {STOCK_COLUMNS})
    SELECT event_id, product_id, as_of, stock_units::numeric, lead_time_days, on_order_units,
           order_multiple_units, target_service_level FROM incoming
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, product_id, as_of, {STOCK_COLUMNS}
),
newest AS (
    SELECT DISTINCT ON (product_id) * FROM new_snapshots
    ORDER BY product_id, as_of DESC, event_id DESC
),
made_current AS (
    INSERT INTO products (product_id, stock_event_id, stock_as_of, {STOCK_COLUMNS},
                          stock_updated_at)
    SELECT product_id, event_id, as_of, {STOCK_COLUMNS}, now() FROM newest
    ORDER BY product_id
    ON CONFLICT (product_id) DO UPDATE SET
        stock_event_id = EXCLUDED.stock_event_id,
        stock_as_of = EXCLUDED.stock_as_of,
        stock_units = EXCLUDED.stock_units,
        lead_time_days = EXCLUDED.lead_time_days,
        on_order_units = EXCLUDED.on_order_units,
        order_multiple_units = EXCLUDED.order_multiple_units,
        target_service_level = EXCLUDED.target_service_level,
        stock_updated_at = EXCLUDED.stock_updated_at
    WHERE products.stock_as_of IS NULL
       OR (EXCLUDED.stock_as_of, EXCLUDED.stock_event_id)
          > (products.stock_as_of, products.stock_event_id)
    RETURNING product_id
),
-- Committed with the new stock level: its risk is to be assessed (services/risk.py),
-- also for a late one, which re-marks the days it brackets as censored or not.
assessments_requested AS (
    {REQUEST_ASSESSMENTS.format(products="SELECT DISTINCT product_id FROM new_snapshots")}
)
SELECT (SELECT count(*) FROM new_snapshots) AS new_snapshots,
       ARRAY(SELECT product_id FROM made_current ORDER BY product_id) AS products_made_current,
       (SELECT count(*) FROM assessments_requested) AS assessments_requested
"""

# Stock levels not new whose first copy was another event: another product or units.
_STOCK_CONFLICTS = """
SELECT i.position, s.product_id, s.as_of, s.stock_units::float8 AS stock_units, s.received_at
FROM unnest(CAST($1 AS text[]), CAST($2 AS text[]), CAST($3 AS float8[]))
     WITH ORDINALITY AS i(event_id, product_id, stock_units, position)
JOIN stock_snapshots s USING (event_id)
WHERE s.product_id <> i.product_id OR s.stock_units <> i.stock_units::numeric
ORDER BY i.position
"""


async def record_stock_snapshots(
    connection: asyncpg.Connection, rows: Sequence[StockSnapshot]
) -> Recorded:
    """Keep every new snapshot as history; make it current where its as_of is the newest.

    A late snapshot (older than the current one) is kept but changes nothing current.
    `rows` must not repeat an event_id.
    """
    if not rows:
        return Recorded(0, [])
    record = await connection.fetchrow(
        _INSERT_STOCK_SNAPSHOTS,
        [row.event_id for row in rows],
        [row.product_id for row in rows],
        [row.as_of for row in rows],
        [row.stock_units for row in rows],
        [row.lead_time_days for row in rows],
        [row.on_order_units for row in rows],
        [row.order_multiple_units for row in rows],
        [row.target_service_level for row in rows],
    )
    assert record is not None
    new_snapshots = int(record["new_snapshots"])
    conflicts: list[Conflict] = []
    if new_snapshots < len(rows):
        for first in await connection.fetch(
            _STOCK_CONFLICTS,
            [row.event_id for row in rows],
            [row.product_id for row in rows],
            [row.stock_units for row in rows],
        ):
            row = rows[first["position"] - 1]
            conflicts.append(
                Conflict(
                    first["position"] - 1,
                    f"event_id: {row.event_id!r} was first recorded for another stock level "
                    f"(product_id {first['product_id']!r}, stock_units "
                    f"{first['stock_units']:g}, as_of {first['as_of'].isoformat()}, arrived "
                    f"{first['received_at'].isoformat(timespec='seconds')}); this one has "
                    f"product_id {row.product_id!r}, stock_units {row.stock_units:g}: an "
                    "event_id must name one event, so this one is not recorded",
                )
            )
    return Recorded(new_snapshots, list(record["products_made_current"]), conflicts)
