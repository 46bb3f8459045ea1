"""Delivery queue: large webhooks stored raw, expanded into launches after the 200

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 05:00:00.000000

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.

`delivery_queue` is a new, empty table: code of the previous revision never reads it.
Deliveries gain two statuses, `queued` and `rejected` (the column is a plain string:
no constraint changes). Downgrade drops the table and turns both back into
`unrecognized`, which the older code reads: the bodies stay stored, and
`automation replay` expands them once the code that queued them runs again (a queued
delivery's launches never expanded are not lost, only delayed until then).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_queue",
        sa.Column("delivery_id", BigId, nullable=False),
        sa.Column("queued_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("claims", sa.Integer(), nullable=False),
        sa.Column("planned", sa.Integer(), nullable=True),
        sa.Column("launches_done", sa.Integer(), nullable=False),
        sa.Column("entities_done", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_queue_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_delivery_queue")),
    )
    op.create_index(
        "ix_delivery_queue_waiting", "delivery_queue", ["finished_at", "queued_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_queue_waiting", table_name="delivery_queue")
    op.drop_table("delivery_queue")
    op.execute(
        "UPDATE deliveries SET status = 'unrecognized' WHERE status IN ('queued', 'rejected')"
    )
