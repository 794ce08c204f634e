"""Global models trained across products, their backtests, and which global model and
combination weights each product's forecast used.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
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


def downgrade() -> None:
    op.drop_column("product_models", "weights")
    op.drop_column("product_models", "global_version")
    op.drop_table("product_backtests")
    op.drop_table("global_models")
