"""One bot per chat: the chat a launch occupies, and the launch that kept it busy

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 23:00:00.000000

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.

Only nullable columns are added (plain ALTER TABLE on both databases, so the
`launch_log` view of 0003 can stay). Launches stored before this revision have no chat
ids: the guard still finds them by their own entity.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("launches", sa.Column("chat_lead_id", sa.BigInteger(), nullable=True))
    op.add_column("launches", sa.Column("chat_contact_id", sa.BigInteger(), nullable=True))
    op.add_column("launches", sa.Column("blocked_by", sa.BigInteger(), nullable=True))
    op.create_index("ix_launches_chat_lead_id", "launches", ["chat_lead_id"])
    op.create_index("ix_launches_chat_contact_id", "launches", ["chat_contact_id"])


def downgrade() -> None:
    op.drop_index("ix_launches_chat_contact_id", table_name="launches")
    op.drop_index("ix_launches_chat_lead_id", table_name="launches")
    op.drop_column("launches", "blocked_by")
    op.drop_column("launches", "chat_contact_id")
    op.drop_column("launches", "chat_lead_id")
