"""Dispatcher: API calls, the shared rate limit, heartbeats, OAuth tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:42:01.021418

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_calls",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("dispatcher", sa.String(length=100), nullable=False),
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("launch_count", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_calls")),
    )
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_calls_started_at"), ["started_at"], unique=False)

    op.create_table(
        "dispatchers",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatchers")),
    )
    with op.batch_alter_table("dispatchers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dispatchers_heartbeat_at"), ["heartbeat_at"], unique=False
        )

    op.create_table(
        "oauth_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_tokens")),
    )
    op.create_table(
        "rate_limits",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("hold_until", sa.DateTime(), nullable=True),
        sa.Column("hold_reason", sa.Text(), nullable=True),
        sa.Column("consecutive_429", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rate_limits")),
    )
    op.create_table(
        "call_launches",
        sa.Column("call_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "launch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["api_calls.id"],
            name=op.f("fk_call_launches_call_id_api_calls"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["launch_id"],
            ["launches.id"],
            name=op.f("fk_call_launches_launch_id_launches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("call_id", "launch_id", name=op.f("pk_call_launches")),
    )
    with op.batch_alter_table("call_launches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_call_launches_launch_id"), ["launch_id"], unique=False)

    with op.batch_alter_table("launches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column(
                "call_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.create_index(batch_op.f("ix_launches_call_id"), ["call_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_launches_call_id_api_calls"),
            "api_calls",
            ["call_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("launches", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_launches_call_id_api_calls"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_launches_call_id"))
        batch_op.drop_column("call_id")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("retries")

    with op.batch_alter_table("call_launches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_call_launches_launch_id"))

    op.drop_table("call_launches")
    op.drop_table("rate_limits")
    op.drop_table("oauth_tokens")
    with op.batch_alter_table("dispatchers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dispatchers_heartbeat_at"))

    op.drop_table("dispatchers")
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_calls_started_at"))

    op.drop_table("api_calls")
