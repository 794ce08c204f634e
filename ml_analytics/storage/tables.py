"""The schema, as SQLAlchemy Core tables. Alembic migrations create it; keep both in step.

Quantities are `numeric`, not floating point, so per-day totals are exact whatever
the order and batching in which events arrive.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()


def stock_level_columns() -> list[Column[object]]:
    """A stock level's fields beside its units, as each snapshot and each product's
    current stock keep them (fresh Column objects for each table)."""
    return [
        Column("lead_time_days", Integer, nullable=True),
        Column("on_order_units", Float, nullable=False, server_default="0"),
        Column("order_multiple_units", Float, nullable=True),
        Column("target_service_level", Float, nullable=True),
    ]


# The ledger of transactions counted: one row per event_id, so a redelivered or
# re-published event is recognised and counted once, whatever day it carries. Bounded
# by arrival: rows that arrived more than DEDUP_WINDOW_DAYS ago are deleted
# (services/ledger.py); the BRIN index finds them, as rows are stored in arrival order.
transaction_events = Table(
    "transaction_events",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("product_id", Text, nullable=False),
    Column("business_day", Date, nullable=False),
    Column("quantity_units", Numeric, nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_transaction_events_ingested_at", "ingested_at", postgresql_using="brin"),
)

daily_demand = Table(
    "daily_demand",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("business_day", Date, primary_key=True),
    Column("quantity_units", Numeric, nullable=False),
    Column("transaction_count", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Days a product's shelf was empty at the day's end (models/censoring.py): its sales
# that day are a lower bound of demand. Only censored days have a row.
censored_days = Table(
    "censored_days",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("business_day", Date, primary_key=True),
    Column("sales_units", Float(precision=53), nullable=False),
    Column("estimated_demand_units", Float(precision=53), nullable=False),
    Column("closing_units", Float(precision=53), nullable=True),
)

# Every stock snapshot received, late ones included (history).
stock_snapshots = Table(
    "stock_snapshots",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("product_id", Text, nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("stock_units", Numeric, nullable=False),
    *stock_level_columns(),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_stock_snapshots_product_as_of", "product_id", "as_of"),
)

# One row per product seen: the span and totals of its demand and its current
# stock (the snapshot with the newest as_of), kept in step with the tables above
# in the same transaction.
products = Table(
    "products",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("first_day", Date, nullable=True),
    Column("last_day", Date, nullable=True),
    Column("total_units", Numeric, nullable=False, server_default="0"),
    Column("transaction_count", BigInteger, nullable=False, server_default="0"),
    Column("data_updated_at", DateTime(timezone=True), nullable=True),
    Column("stock_event_id", Text, nullable=True),
    Column("stock_as_of", DateTime(timezone=True), nullable=True),
    Column("stock_units", Numeric, nullable=True),
    *stock_level_columns(),
    Column("stock_updated_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The newest event time the product has shown, and when it arrived: the evidence
    # the stream's clock is corroborated by (storage/clock.py).
    Column("event_time_at", DateTime(timezone=True), nullable=True),
    Column("event_time_arrived_at", DateTime(timezone=True), nullable=True),
    Index("ix_products_data_updated_at", "data_updated_at"),
    Index(
        "ix_products_event_time_at",
        "event_time_at",
        postgresql_where=text("event_time_at IS NOT NULL"),
    ),
)

# Products whose stock level or model changed and whose risk is still to be assessed:
# written in the same transaction as the change, removed by the assessment
# (services/risk.py), so a failure or a crash in between loses no assessment.
pending_assessments = Table(
    "pending_assessments",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("requests", BigInteger, nullable=False, server_default="1"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("not_before", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text, nullable=True),
    Index("ix_pending_assessments_not_before", "not_before"),
)

# Each product's latest model: its forecast, the sample paths risk is computed
# from (float32, paths x days), and its accuracy figures.
product_models = Table(
    "product_models",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("model_name", Text, nullable=False),
    Column("trained_at", DateTime(timezone=True), nullable=False),
    Column("trained_through", Date, nullable=False),
    Column("training_days", Integer, nullable=False),
    Column("units_seen", Numeric, nullable=False),
    Column("forecast_start", Date, nullable=False),
    Column("yhat", ARRAY(Float(precision=53)), nullable=False),
    Column("yhat_lower", ARRAY(Float(precision=53)), nullable=False),
    Column("yhat_upper", ARRAY(Float(precision=53)), nullable=False),
    Column("sample_paths", LargeBinary, nullable=False),
    Column("path_count", Integer, nullable=False),
    Column("metrics", JSONB, nullable=False),
    Column("seasonality", JSONB, nullable=False),
    Column("fit_seconds", Float, nullable=False),
    Column("global_version", BigInteger, nullable=True),
    Column("weights", JSONB, nullable=True),
)

# The latest risk assessment per product, and the level last queued for publishing.
product_risk = Table(
    "product_risk",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("assessment", JSONB, nullable=False),
    Column("risk_level", Text, nullable=False),
    Column("stockout_probability", Float, nullable=False),
    Column("assessed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_level", Text, nullable=True),
    Column("published_event_id", Text, nullable=True),
    Column("published_order_needed", Boolean, nullable=True),
)

# Stockout-risk events waiting to be published (the outbox), and when they were.
risk_outbox = Table(
    "risk_outbox",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("product_id", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Index(
        "ix_risk_outbox_unpublished", "created_at", postgresql_where=text("published_at IS NULL")
    ),
)

# Responses of the HTTP API's forecasts and stockout predictions, by request content.
prediction_cache = Table(
    "prediction_cache",
    metadata,
    Column("cache_key", Text, primary_key=True),
    Column("endpoint", Text, nullable=False),
    Column("product_id", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_prediction_cache_expires_at", "expires_at"),
)

# Operators' requests to skip a record batch the consumer cannot decode (ml-analytics
# skip); the replica that owns the partition carries them out.
partition_skips = Table(
    "partition_skips",
    metadata,
    Column("request_id", BigInteger, Identity(), primary_key=True),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("reason", Text, nullable=True),
    Column("requested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("outcome", Text, nullable=True),
    Column("skipped_from", BigInteger, nullable=True),
    Column("skipped_to", BigInteger, nullable=True),
    Column("done_at", DateTime(timezone=True), nullable=True),
    Index(
        "ix_partition_skips_pending", "requested_at", postgresql_where=text("status = 'pending'")
    ),
)

# The stream's event-time clock (one row): the newest occurred_at of a transaction
# seen. Days before the watermark's day are complete (see models/clock.py).
stream_clock = Table(
    "stream_clock",
    metadata,
    Column("clock_id", SmallInteger, primary_key=True),
    Column("newest_event_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("clock_id = 1", name="ck_stream_clock_one_row"),
)

# Global models trained across products (the latest few), with the combination their
# backtest chose and the calibration of the sample paths.
global_models = Table(
    "global_models",
    metadata,
    Column("version", BigInteger, Identity(), primary_key=True),
    Column("trained_at", DateTime(timezone=True), nullable=False),
    Column("trained_through", Date, nullable=False),
    Column("model_text", Text, nullable=True),
    Column("training_rows", Integer, nullable=False),
    Column("products", Integer, nullable=False),
    Column("combination", JSONB, nullable=False),
    Column("selection", JSONB, nullable=False),
    Column("calibration", JSONB, nullable=True),
    Column("seconds", JSONB, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
)

# Each product's backtests: forecast at an origin with a model that saw nothing after it.
product_backtests = Table(
    "product_backtests",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("origin", Date, primary_key=True),
    Column("member_totals", JSONB, nullable=False),
    Column("forecast_total", Float, nullable=False),
    Column("actual_total", Float, nullable=False),
    Column("actual_14", Float, nullable=False),
    Column("pit_14", Float, nullable=True),
    Column("rmse", Float, nullable=False),
    Column("mape", Float, nullable=True),
    Column("features", JSONB, nullable=True),  # models/calibration.py; NaN stored as null
    # The product forecast from a cut history, as if posted (models/backtest.py).
    Column("posted_pit_14", Float, nullable=True),
    Column("posted_features", JSONB, nullable=True),
    # How the raw sample paths behind the PITs were drawn (distribution.PATHS_VERSION).
    Column("paths_version", SmallInteger, nullable=False, server_default="1"),
    Index("ix_product_backtests_origin", "origin"),
)
