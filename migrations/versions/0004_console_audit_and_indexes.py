"""Console: the audit of operator actions, and indexes for status and bot pages

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 23:00:00.000000

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("requested", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_entries_at"), ["at"], unique=False)
    op.create_table(
        "audit_launches",
        sa.Column("audit_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "launch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["audit_id"],
            ["audit_entries.id"],
            name=op.f("fk_audit_launches_audit_id_audit_entries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["launch_id"],
            ["launches.id"],
            name=op.f("fk_audit_launches_launch_id_launches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("audit_id", "launch_id", name=op.f("pk_audit_launches")),
    )
    with op.batch_alter_table("audit_launches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_launches_launch_id"), ["launch_id"], unique=False
        )
    with op.batch_alter_table("launches", schema=None) as batch_op:
        batch_op.create_index(
            "ix_launches_status_created", ["status", "created_at", "rule", "bot_id"], unique=False
        )
        batch_op.create_index("ix_launches_bot_created", ["bot_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("launches", schema=None) as batch_op:
        batch_op.drop_index("ix_launches_bot_created")
        batch_op.drop_index("ix_launches_status_created")
    with op.batch_alter_table("audit_launches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_launches_launch_id"))
    op.drop_table("audit_launches")
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_entries_at"))
    op.drop_table("audit_entries")
