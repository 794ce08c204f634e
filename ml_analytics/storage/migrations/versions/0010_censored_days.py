"""Demand, not sales: each product's censored days (the shelf was empty at the day's
end, from its stock levels and sales), with the sales and the estimated demand of each,
as the service last computed them (services/demand.py). Only censored days have a row;
a product's rows over the days it is computed for are replaced each time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "censored_days",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("business_day", sa.Date, primary_key=True),
        sa.Column("sales_units", sa.Float(precision=53), nullable=False),
        sa.Column("estimated_demand_units", sa.Float(precision=53), nullable=False),
        sa.Column("closing_units", sa.Float(precision=53), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("censored_days")
