"""Deliveries (the inbox) and launches (the outbox and launch log)

Revision ID: 0001
Revises:
Create Date: 2026-11-25 12:38:12.726523

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.Column("content_type", sa.String(length=200), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("account_subdomain", sa.String(length=100), nullable=True),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("launch_count", sa.Integer(), nullable=False),
        sa.Column("duplicate_count", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "accepted", "unrecognized", name="deliverystatus", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deliveries_received_at"), ["received_at"], unique=False
        )

    op.create_table(
        "launches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("rule", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("event_group", sa.String(length=100), nullable=False),
        sa.Column("event_index", sa.Integer(), nullable=False),
        sa.Column("bot_id", sa.BigInteger(), nullable=False),
        sa.Column("entity_type", sa.SmallInteger(), nullable=False),
        sa.Column("entity_id", sa.BigInteger(), nullable=False),
        sa.Column("change_key", sa.String(length=300), nullable=False),
        sa.Column("dedupe_key", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "sending",
                "sent",
                "failed",
                "uncertain",
                "dry_run",
                "cancelled",
                "skipped",
                name="launchstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("sending_at", sa.DateTime(), nullable=True),
        sa.Column("settled_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_launches_delivery_id_deliveries"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_launches")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_launches_dedupe_key")),
    )
    with op.batch_alter_table("launches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_launches_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_launches_delivery_id"), ["delivery_id"], unique=False)
        batch_op.create_index("ix_launches_due", ["status", "not_before", "id"], unique=False)
        batch_op.create_index("ix_launches_rule_created", ["rule", "created_at"], unique=False)
        batch_op.create_index(
            "ix_launches_target", ["entity_id", "entity_type", "bot_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("launches", schema=None) as batch_op:
        batch_op.drop_index("ix_launches_target")
        batch_op.drop_index("ix_launches_rule_created")
        batch_op.drop_index("ix_launches_due")
        batch_op.drop_index(batch_op.f("ix_launches_delivery_id"))
        batch_op.drop_index(batch_op.f("ix_launches_created_at"))

    op.drop_table("launches")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_received_at"))

    op.drop_table("deliveries")
