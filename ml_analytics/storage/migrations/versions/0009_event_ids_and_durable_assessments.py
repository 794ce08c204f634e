"""Exactly once by event_id whatever its day; a clock that needs corroboration; durable
assessments.

- The ledger of transaction event ids is keyed by `event_id` alone (it was
  `(event_id, business_day)`, partitioned by the event's week): an event published
  again with another day is recognised, and an event of any age can be counted (a
  backfill). It is bounded by arrival time instead of event time: rows that arrived
  more than DEDUP_WINDOW_DAYS ago are deleted in small batches (a BRIN index on
  `ingested_at`, which grows with the table's physical order, finds them). The
  partition functions and the floor go.
- Each product keeps the newest event time it has shown (`event_time_at`, and when
  that arrived): the stream's clock is the K-th newest of them over distinct
  products, so fewer than K products' events cannot move it.
- `pending_assessments`: a product whose stock level or model changed, written in the
  same transaction as that change; the risk service assesses and removes it, so an
  exception or a crash between the change and its assessment loses nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _ledger_by_event_id()
    _product_event_times()
    _pending_assessments()


def _ledger_by_event_id() -> None:
    """The ledger keyed by event_id alone, unpartitioned; the partition functions and
    the floor go."""
    op.execute("ALTER TABLE transaction_events RENAME TO transaction_events_by_week")
    op.execute(
        """
CREATE TABLE transaction_events (
    event_id text PRIMARY KEY,
    product_id text NOT NULL,
    business_day date NOT NULL,
    quantity_units numeric NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
)
"""
    )
    # The first copy of each event_id wins, as it did within a week.
    op.execute(
        "INSERT INTO transaction_events "
        "SELECT DISTINCT ON (event_id) event_id, product_id, business_day, quantity_units, "
        "ingested_at FROM transaction_events_by_week ORDER BY event_id, ingested_at, business_day"
    )
    op.execute("DROP TABLE transaction_events_by_week")
    op.execute(
        "CREATE INDEX ix_transaction_events_ingested_at ON transaction_events "
        "USING brin (ingested_at)"
    )
    op.execute("DROP FUNCTION drop_ledger_partitions(date)")
    op.execute("DROP FUNCTION ensure_ledger_partitions(date[])")
    op.execute("DROP TABLE ledger_retention")


def _product_event_times() -> None:
    """Each product's newest event time and when it arrived, for the clock."""
    op.add_column("products", sa.Column("event_time_at", sa.DateTime(timezone=True)))
    op.add_column("products", sa.Column("event_time_arrived_at", sa.DateTime(timezone=True)))
    # What is known of stored products: their last day's start (UTC), capped by the clock.
    op.execute(
        "UPDATE products SET event_time_at = LEAST(last_day::timestamp AT TIME ZONE 'UTC', "
        "(SELECT newest_event_at FROM stream_clock WHERE clock_id = 1)), "
        "event_time_arrived_at = data_updated_at WHERE last_day IS NOT NULL"
    )
    op.create_index(
        "ix_products_event_time_at",
        "products",
        ["event_time_at"],
        postgresql_where=sa.text("event_time_at IS NOT NULL"),
    )


def _pending_assessments() -> None:
    """Products whose assessment is due, with what was stored before this revision."""
    op.create_table(
        "pending_assessments",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        # Bumped by every request: an assessment removes the row only if no request
        # came while it ran.
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "not_before", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_pending_assessments_not_before", "pending_assessments", ["not_before"])
    # Stock levels and models stored before this revision whose assessment is older.
    op.execute(
        "INSERT INTO pending_assessments (product_id, requested_at) "
        "SELECT p.product_id, now() FROM products p JOIN product_models m USING (product_id) "
        "LEFT JOIN product_risk r USING (product_id) "
        "WHERE p.stock_as_of IS NOT NULL AND (r.assessed_at IS NULL "
        "OR r.assessed_at < GREATEST(p.stock_updated_at, m.trained_at))"
    )


def downgrade() -> None:
    # Events of one id on two days are one row now: they cannot be split back.
    raise NotImplementedError("0009 cannot be downgraded: restore a backup taken before it")
