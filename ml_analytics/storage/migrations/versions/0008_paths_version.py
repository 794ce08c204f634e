"""Each backtest keeps the version of the sample paths its PITs were drawn under
(distribution.PATHS_VERSION): a recalibration learns only from PITs of paths drawn as
they are now. Rows stored before were drawn under version 1.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "product_backtests",
        sa.Column("paths_version", sa.SmallInteger, nullable=False, server_default="1"),
    )


def downgrade() -> None:
    op.drop_column("product_backtests", "paths_version")
