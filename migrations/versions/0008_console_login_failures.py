"""Console: failed logins per client address (the login lockout); unrecognized deliveries by time

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:00:00.000000

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.

`login_failures` is a new, empty table: code of the previous revision never reads it,
and dropping it on downgrade forgets only who failed to log in during the last minutes.

`ix_deliveries_unrecognized` indexes `received_at` of the unrecognized deliveries only
(a partial index; accepted ones, nearly all, add no entry), so listing them newest
first does not walk every accepted webhook. On a large PostgreSQL table build it by
hand first with CREATE INDEX CONCURRENTLY under the same name; this revision then
skips it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


UNRECOGNIZED = sa.text("status = 'unrecognized'")


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_unrecognized",
        "deliveries",
        ["received_at"],
        unique=False,
        sqlite_where=UNRECOGNIZED,
        postgresql_where=UNRECOGNIZED,
        if_not_exists=True,
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("failed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index("ix_login_failures_address", ["address", "failed_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_login_failures_failed_at"), ["failed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_failures_failed_at"))
        batch_op.drop_index("ix_login_failures_address")
    op.drop_table("login_failures")
    op.drop_index("ix_deliveries_unrecognized", table_name="deliveries")
