"""Replenishment: what a stock level says about orders (units on order, the order
multiple, the product's target service level), kept with each snapshot and with the
product's current stock; and whether the last published risk event asked for an
order, so that an event is also published when the recommended order crosses zero.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STOCK_TABLES = ("stock_snapshots", "products")


def upgrade() -> None:
    for table in _STOCK_TABLES:
        op.add_column(
            table,
            sa.Column("on_order_units", sa.Float, nullable=False, server_default="0"),
        )
        op.add_column(table, sa.Column("order_multiple_units", sa.Float, nullable=True))
        op.add_column(table, sa.Column("target_service_level", sa.Float, nullable=True))
    op.add_column("product_risk", sa.Column("published_order_needed", sa.Boolean, nullable=True))


def downgrade() -> None:
    op.drop_column("product_risk", "published_order_needed")
    for table in _STOCK_TABLES:
        for column in ("target_service_level", "order_multiple_units", "on_order_units"):
            op.drop_column(table, column)
