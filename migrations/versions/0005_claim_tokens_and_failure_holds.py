"""Claim tokens on launches (fencing) and a streak of failures on the request budget

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 23:00:00.000000

`launches.claim_token` is fresh for every claim: a dispatcher settles, resends or
releases a launch only while the launch still carries its token, so one that stalled
past DISPATCHER_DEAD_AFTER cannot act on launches another dispatcher recovered.
`rate_limits.consecutive_failures` counts 5xx answers and connection failures in a row:
they put every dispatcher on a growing hold, as 429s do. Both columns are nullable or
have a server default, so running dispatchers keep working during the upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("launches", sa.Column("claim_token", sa.String(length=32), nullable=True))
    op.add_column(
        "rate_limits",
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    # Plain ALTER TABLE … DROP COLUMN (SQLite 3.35+), not batch mode: the launch_log
    # view names `launches`, and batch mode's copy-and-rename fails under a view.
    op.drop_column("rate_limits", "consecutive_failures")
    op.drop_column("launches", "claim_token")
