"""Streaming and forecasting at scale:
- operators' requests to skip a record batch the consumer cannot decode;
- the stream's event-time clock (the newest occurred_at seen);
- global models trained across products, their backtests, and which global model and
  combination weights each product's forecast used;
- the ledger of transaction event ids, partitioned by the event's own week, so that it
  stays bounded: weeks older than the dedup window are dropped whole. A redelivered
  event has the same business day as its first copy, so it meets it in the same
  partition: the primary key (event_id, business_day) is what dedup checks. The
  service's role may not create or drop tables (least privilege): two functions owned
  by the migrating role do that, and only that, on its behalf.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _skip_requests()
    _stream_clock()
    _global_models()
    _partitioned_ledger()


def downgrade() -> None:
    _drop_partitioned_ledger()
    _drop_global_models()
    op.drop_table("stream_clock")
    op.drop_table("partition_skips")


def _skip_requests() -> None:
    op.create_table(
        "partition_skips",
        sa.Column("request_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column(
            "requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        # pending, skipped, or refused (the partition is not stuck at that offset).
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("skipped_from", sa.BigInteger, nullable=True),
        sa.Column("skipped_to", sa.BigInteger, nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_partition_skips_pending",
        "partition_skips",
        ["requested_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def _stream_clock() -> None:
    op.create_table(
        "stream_clock",
        sa.Column("clock_id", sa.SmallInteger, primary_key=True),
        sa.Column("newest_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("clock_id = 1", name="ck_stream_clock_one_row"),
    )
    # The clock starts where the stored transactions leave it (none: not started).
    op.execute(
        "INSERT INTO stream_clock (clock_id, newest_event_at, updated_at) "
        "SELECT 1, max(business_day)::timestamptz, now() FROM daily_demand"
    )


def _global_models() -> None:
    op.create_table(
        "global_models",
        sa.Column("version", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
        # The clock's last complete day it saw.
        sa.Column("trained_through", sa.Date, nullable=False),
        # LightGBM's text form; null when there was too little data (local members only).
        sa.Column("model_text", sa.Text, nullable=True),
        sa.Column("training_rows", sa.Integer, nullable=False),
        sa.Column("products", sa.Integer, nullable=False),
        # The combination chosen by backtest ({member: weight}) and why.
        sa.Column("combination", postgresql.JSONB, nullable=False),
        sa.Column("selection", postgresql.JSONB, nullable=False),
        # The PIT density the sample paths are recalibrated with (null: raw paths).
        sa.Column("calibration", postgresql.JSONB, nullable=True),
        sa.Column("seconds", postgresql.JSONB, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "product_backtests",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("origin", sa.Date, primary_key=True),
        sa.Column("member_totals", postgresql.JSONB, nullable=False),
        sa.Column("forecast_total", sa.Float, nullable=False),
        sa.Column("actual_total", sa.Float, nullable=False),
        sa.Column("actual_14", sa.Float, nullable=False),
        sa.Column("pit_14", sa.Float, nullable=True),
        sa.Column("rmse", sa.Float, nullable=False),
        sa.Column("mape", sa.Float, nullable=True),
    )
    op.create_index("ix_product_backtests_origin", "product_backtests", ["origin"])
    op.add_column("product_models", sa.Column("global_version", sa.BigInteger, nullable=True))
    op.add_column("product_models", sa.Column("weights", postgresql.JSONB, nullable=True))


def _partitioned_ledger() -> None:
    op.execute("ALTER TABLE transaction_events RENAME TO transaction_events_unpartitioned")
    op.execute(
        "ALTER INDEX transaction_events_pkey RENAME TO transaction_events_unpartitioned_pkey"
    )
    _create_partitioned_tables()
    _create_ensure_partitions()
    _create_drop_partitions()
    op.execute(
        "SELECT ensure_ledger_partitions(ARRAY(SELECT DISTINCT business_day "
        "FROM transaction_events_unpartitioned))"
    )
    op.execute("INSERT INTO transaction_events SELECT * FROM transaction_events_unpartitioned")
    op.execute("DROP TABLE transaction_events_unpartitioned")


def _create_partitioned_tables() -> None:
    """The ledger, partitioned by business day, and the floor below which its weeks
    are dropped."""
    op.execute(
        """
CREATE TABLE transaction_events (
    event_id text NOT NULL,
    product_id text NOT NULL,
    business_day date NOT NULL,
    quantity_units numeric NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, business_day)
) PARTITION BY RANGE (business_day)
"""
    )
    op.execute(
        """
CREATE TABLE ledger_retention (
    retention_id smallint PRIMARY KEY CHECK (retention_id = 1),
    floor date,
    updated_at timestamptz
)
"""
    )
    op.execute("INSERT INTO ledger_retention (retention_id) VALUES (1)")


def _create_ensure_partitions() -> None:
    """ensure_ledger_partitions(weeks): create the missing weeks' partitions, except
    those below the floor; run with the migrating role's rights."""
    # Weeks start on Monday; one partition per week, named after its Monday.
    op.execute(
        """
CREATE FUNCTION ensure_ledger_partitions(weeks date[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    week date;
    created integer := 0;
    name text;
    oldest date := (SELECT floor FROM ledger_retention WHERE retention_id = 1);
BEGIN
    FOREACH week IN ARRAY weeks LOOP
        week := week - (extract(isodow FROM week)::integer - 1);
        IF oldest IS NOT NULL AND week + 7 <= oldest THEN
            CONTINUE;  -- dropped for good: its events can no longer be checked
        END IF;
        name := 'transaction_events_' || to_char(week, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF transaction_events FOR VALUES FROM (%L) TO (%L)',
                    name, week, week + 7);
                created := created + 1;
            EXCEPTION WHEN duplicate_table OR invalid_object_definition THEN
                NULL;  -- another session created it first
            END;
        END IF;
    END LOOP;
    RETURN created;
END $$
"""
    )


def _create_drop_partitions() -> None:
    """drop_ledger_partitions(below): drop the weeks that end on or before `below`;
    run with the migrating role's rights."""
    op.execute(
        """
CREATE FUNCTION drop_ledger_partitions(below date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT child.relname AS name FROM pg_inherits
        JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE parent.relname = 'transaction_events'
          AND child.relname ~ '^transaction_events_[0-9]{8}$'
          AND to_date(right(child.relname, 8), 'YYYYMMDD') + 7 <= below
    LOOP
        EXECUTE format('DROP TABLE %I', part.name);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$
"""
    )


def _drop_global_models() -> None:
    op.drop_column("product_models", "weights")
    op.drop_column("product_models", "global_version")
    op.drop_table("product_backtests")
    op.drop_table("global_models")


def _drop_partitioned_ledger() -> None:
    op.execute("CREATE TABLE transaction_events_flat (LIKE transaction_events INCLUDING DEFAULTS)")
    op.execute("INSERT INTO transaction_events_flat SELECT * FROM transaction_events")
    op.execute("DROP TABLE transaction_events")
    op.execute("ALTER TABLE transaction_events_flat RENAME TO transaction_events")
    op.execute("ALTER TABLE transaction_events ADD PRIMARY KEY (event_id)")
    op.execute("DROP FUNCTION drop_ledger_partitions(date)")
    op.execute("DROP FUNCTION ensure_ledger_partitions(date[])")
    op.execute("DROP TABLE ledger_retention")
