"""Rules versions and delivery entities: which rules judged a delivery, what it was about

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 23:00:00.000000

Migration safety: web workers and dispatchers may be running against this database.
Add columns as nullable or with a server default; create indexes on PostgreSQL with
`postgresql_concurrently=True` outside a transaction when the table is large; never
rename or drop a column that the running code still reads.

`rules_versions` holds each distinct rules file content once; `deliveries` and
`launches` gain a nullable `rules_version_id` (no foreign key: a pruned version must
not erase which version judged a delivery). Old deliveries keep NULL there: nothing
recorded which rules judged them, and guessing would be worse than saying so.

`delivery_entities` is backfilled from the stored bodies, a batch of deliveries per
statement, with the decoder of the code that runs this revision (the pure
`automation.events`). A body that no longer decodes gets no entities, as a webhook
with that body would not have been stored today. The `launch_log` view (0003) names
none of the new columns, so it stays.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Deliveries decoded per round trip while backfilling.
BATCH = 500


def upgrade() -> None:
    op.create_table(
        "rules_versions",
        sa.Column("id", BigId, nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("first_loaded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rules_versions")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_rules_versions_content_hash")),
    )
    op.create_table(
        "delivery_entities",
        sa.Column("delivery_id", BigId, nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_entities_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "delivery_id", "entity_type", "entity_id", name=op.f("pk_delivery_entities")
        ),
    )
    op.create_index(
        "ix_delivery_entities_entity", "delivery_entities", ["entity_id", "delivery_id"]
    )
    for table in ("deliveries", "launches"):
        op.add_column(table, sa.Column("rules_version_id", sa.BigInteger(), nullable=True))
        op.create_index(f"ix_{table}_rules_version_id", table, ["rules_version_id"])
    _backfill_entities()


def _backfill_entities() -> None:
    """Entities of every stored delivery, decoded from its body, `BATCH` at a time."""
    from automation.errors import PayloadError
    from automation.events.mentions import named_entities
    from automation.events.payloads import decode_body

    bind = op.get_bind()
    deliveries = sa.table(
        "deliveries",
        sa.column("id"),
        sa.column("body"),
        sa.column("content_type"),
        sa.column("received_at"),
    )
    entities = sa.table(
        "delivery_entities",
        sa.column("delivery_id"),
        sa.column("entity_type"),
        sa.column("entity_id"),
    )
    after = 0
    while True:
        rows = bind.execute(
            sa.select(
                deliveries.c.id,
                deliveries.c.body,
                deliveries.c.content_type,
                deliveries.c.received_at,
            )
            .where(deliveries.c.id > after)
            .order_by(deliveries.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        after = rows[-1].id
        found = []
        for row in rows:
            try:
                # The arrival time only keys changes; entities do not depend on it.
                received_at = row.received_at
                if isinstance(received_at, str):  # SQLite without the model's type
                    received_at = datetime.fromisoformat(received_at)
                payload = decode_body(
                    bytes(row.body), row.content_type, received_at=received_at.replace(tzinfo=UTC)
                )
            except PayloadError:
                continue
            found += [
                {"delivery_id": row.id, "entity_type": kind, "entity_id": entity_id}
                for kind, entity_id in named_entities(payload)
            ]
        if found:
            bind.execute(entities.insert(), found)


def downgrade() -> None:
    for table in ("launches", "deliveries"):
        op.drop_index(f"ix_{table}_rules_version_id", table_name=table)
        # A plain DROP COLUMN (SQLite 3.35+): batch mode would copy the table, which the
        # launch_log view over it forbids.
        op.execute(f"ALTER TABLE {table} DROP COLUMN rules_version_id")
    op.drop_index("ix_delivery_entities_entity", table_name="delivery_entities")
    op.drop_table("delivery_entities")
    op.drop_table("rules_versions")
