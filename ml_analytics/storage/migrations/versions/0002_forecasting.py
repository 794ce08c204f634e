"""Forecasting: each product's latest model and forecast, its latest risk assessment,
and the outbox of stockout-risk events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_FLOATS = postgresql.ARRAY(sa.Float(precision=53))


def upgrade() -> None:
    op.create_table(
        "product_models",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trained_through", sa.Date, nullable=False),
        sa.Column("training_days", sa.Integer, nullable=False),
        sa.Column("units_seen", sa.Numeric, nullable=False),
        sa.Column("forecast_start", sa.Date, nullable=False),
        sa.Column("yhat", _FLOATS, nullable=False),
        sa.Column("yhat_lower", _FLOATS, nullable=False),
        sa.Column("yhat_upper", _FLOATS, nullable=False),
        # float32 matrix (paths x horizon days), row-major: the predictive distribution
        # that risk assessments of later stock levels use without refitting.
        sa.Column("sample_paths", sa.LargeBinary, nullable=False),
        sa.Column("path_count", sa.Integer, nullable=False),
        sa.Column("metrics", postgresql.JSONB, nullable=False),
        sa.Column("seasonality", postgresql.JSONB, nullable=False),
        sa.Column("fit_seconds", sa.Float, nullable=False),
    )
    op.create_table(
        "product_risk",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("assessment", postgresql.JSONB, nullable=False),
        sa.Column("risk_level", sa.Text, nullable=False),
        sa.Column("stockout_probability", sa.Float, nullable=False),
        sa.Column("assessed_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("published_level", sa.Text, nullable=True),
        sa.Column("published_event_id", sa.Text, nullable=True),
    )
    op.create_table(
        "risk_outbox",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("product_id", sa.Text, nullable=False),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_risk_outbox_unpublished",
        "risk_outbox",
        ["created_at"],
        postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("risk_outbox")
    op.drop_table("product_risk")
    op.drop_table("product_models")
