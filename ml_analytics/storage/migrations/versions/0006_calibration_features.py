"""Conditional calibration: each backtest keeps the product's features at its origin
(models/calibration.py), which the sample paths' recalibration learns from. Rows
stored before have none and are left out of that learning.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("product_backtests", sa.Column("features", postgresql.JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("product_backtests", "features")
