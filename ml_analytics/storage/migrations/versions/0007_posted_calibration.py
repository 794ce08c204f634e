"""Recalibration of posted histories: each backtest also keeps the PIT and the features
of the product forecast from a cut history, as if posted to the API
(models/backtest.py), which the model for posted histories shorter than a year learns
from. Rows stored before have none.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("product_backtests", sa.Column("posted_pit_14", sa.Float, nullable=True))
    op.add_column(
        "product_backtests", sa.Column("posted_features", postgresql.JSONB, nullable=True)
    )


def downgrade() -> None:
    op.drop_column("product_backtests", "posted_features")
    op.drop_column("product_backtests", "posted_pit_14")
