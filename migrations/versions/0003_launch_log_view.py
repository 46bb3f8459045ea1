"""Launch log view: launches with their delivery and settling API call, flat

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00.000000

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.

The view is for people who look with a SQL client (and for `automation launches
list`); it holds no data. A later revision that alters `launches`, `deliveries` or
`api_calls` must drop this view first and create it again afterwards: PostgreSQL
refuses to change the type of, or drop, a column a view uses, and SQLite's batch mode
(copy the table, drop the old one, rename the copy) fails on the rename while a view
names the dropped table.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Entity codes of amoCRM's salesbot API, spelled out here rather than imported: a
# revision must keep meaning what it meant when it was written.
CREATE_LAUNCH_LOG = """
CREATE VIEW launch_log AS
SELECT
    l.id AS id,
    l.status AS status,
    l.reason AS reason,
    l.rule AS rule,
    l.event_type AS event_type,
    l.bot_id AS bot_id,
    l.entity_type AS entity_type,
    CASE l.entity_type
        WHEN 1 THEN 'contact'
        WHEN 2 THEN 'lead'
        WHEN 3 THEN 'company'
        WHEN 12 THEN 'customer'
    END AS entity_kind,
    l.entity_id AS entity_id,
    l.created_at AS created_at,
    l.not_before AS not_before,
    l.settled_at AS settled_at,
    l.attempts AS attempts,
    l.retries AS retries,
    l.last_error AS last_error,
    l.delivery_id AS delivery_id,
    d.received_at AS received_at,
    d.account_id AS account_id,
    l.call_id AS call_id,
    c.status_code AS call_status_code,
    c.outcome AS call_outcome,
    c.finished_at AS call_finished_at
FROM launches AS l
LEFT JOIN deliveries AS d ON d.id = l.delivery_id
LEFT JOIN api_calls AS c ON c.id = l.call_id
"""


def upgrade() -> None:
    op.execute(CREATE_LAUNCH_LOG)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS launch_log")
