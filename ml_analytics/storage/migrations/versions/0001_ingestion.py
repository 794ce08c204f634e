"""Ingestion: the transaction ledger, daily demand, stock snapshots, products.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "transaction_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("product_id", sa.Text, nullable=False),
        sa.Column("business_day", sa.Date, nullable=False),
        sa.Column("quantity_units", sa.Numeric, nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    )
    op.create_table(
        "daily_demand",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("business_day", sa.Date, primary_key=True),
        sa.Column("quantity_units", sa.Numeric, nullable=False),
        sa.Column("transaction_count", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    )
    op.create_table(
        "stock_snapshots",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("product_id", sa.Text, nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stock_units", sa.Numeric, nullable=False),
        sa.Column("lead_time_days", sa.Integer, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    )
    op.create_index("ix_stock_snapshots_product_as_of", "stock_snapshots", ["product_id", "as_of"])
    op.create_table(
        "products",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("first_day", sa.Date, nullable=True),
        sa.Column("last_day", sa.Date, nullable=True),
        sa.Column("total_units", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("transaction_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("data_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stock_event_id", sa.Text, nullable=True),
        sa.Column("stock_as_of", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stock_units", sa.Numeric, nullable=True),
        sa.Column("lead_time_days", sa.Integer, nullable=True),
        sa.Column("stock_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    )
    op.create_index("ix_products_data_updated_at", "products", ["data_updated_at"])


def downgrade() -> None:
    op.drop_table("products")
    op.drop_table("stock_snapshots")
    op.drop_table("daily_demand")
    op.drop_table("transaction_events")
