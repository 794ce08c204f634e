"""The stream's event-time clock: the newest occurred_at seen, one row for the service.

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


def upgrade() -> None:
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


def downgrade() -> None:
    op.drop_table("stream_clock")
