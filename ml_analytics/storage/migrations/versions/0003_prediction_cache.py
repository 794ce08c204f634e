"""The prediction cache of the HTTP API: one response per request content, until it expires.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prediction_cache",
        # sha256 of the endpoint, the product, the request's content (the history and
        # stock actually used) and the model settings.
        sa.Column("cache_key", sa.Text, primary_key=True),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("product_id", sa.Text, nullable=False),
        # The JSON body as sent, so a hit is returned without decoding it again.
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_prediction_cache_expires_at", "prediction_cache", ["expires_at"])


def downgrade() -> None:
    op.drop_table("prediction_cache")
