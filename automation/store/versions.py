"""Rules versions: each distinct rules file content, stored once, and which one judged
a delivery or a launch.

A server records the version of the rules it loads, at start and at each reload, never
per webhook; the webhook then writes only the version's id. Two servers (or gunicorn
workers) loading the same file race to insert the same hash: `ON CONFLICT DO NOTHING`
on the unique hash, then a read, gives both the one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from automation.rules.load import RuleSet, load_rules
from automation.store.database import dialect_insert
from automation.store.models import RulesVersion


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """A rules version as stored: which text, from where, first loaded when."""

    id: int
    content_hash: str
    path: str
    first_loaded_at: datetime
    text: str

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits, as logs and the CLI show a version."""
        return self.content_hash[:12]

    def describe(self) -> str:
        """`#3 (sha256 0123456789ab, first loaded 2026-12-06T22:00:00Z from rules.yaml)`."""
        loaded = f"{self.first_loaded_at:%Y-%m-%dT%H:%M:%S}Z"
        return f"#{self.id} (sha256 {self.short_hash}, first loaded {loaded} from {self.path})"

    def rules(self) -> RuleSet:
        """The stored text compiled again (raises `RulesError` if today's code refuses it)."""
        return load_rules(self.text, self.path)


def record_version(engine: Engine, rules: RuleSet, now: datetime) -> StoredVersion:
    """The stored version of `rules`, inserted if no server stored this content yet."""
    with engine.begin() as connection:
        return record_in(connection, rules, now)


def record_in(connection: Connection, rules: RuleSet, now: datetime) -> StoredVersion:
    """`record_version` in the caller's transaction."""
    values = {
        "content_hash": rules.content_hash,
        "text": rules.source,
        "path": rules.filename[:1000],
        "first_loaded_at": now,
    }
    insert = dialect_insert(connection.dialect.name)(RulesVersion).values(values)
    connection.execute(insert.on_conflict_do_nothing(index_elements=["content_hash"]))
    row = connection.execute(
        select(RulesVersion).where(RulesVersion.content_hash == rules.content_hash)
    ).one()
    return _stored(row)


def get_version(session: Session, version_id: int) -> StoredVersion | None:
    """The version with this id, or None when it was pruned (or never existed)."""
    row = session.get(RulesVersion, version_id)
    return None if row is None else _stored(row)


def find_version(session: Session, content_hash: str) -> StoredVersion | None:
    """The stored version with this content hash, or None if no server loaded it yet."""
    row = session.scalars(
        select(RulesVersion).where(RulesVersion.content_hash == content_hash)
    ).first()
    return None if row is None else _stored(row)


def recent_versions(session: Session, limit: int = 5) -> list[StoredVersion]:
    """The versions first loaded last, newest first."""
    rows = session.scalars(select(RulesVersion).order_by(RulesVersion.id.desc()).limit(limit))
    return [_stored(row) for row in rows]


def _stored(row: Any) -> StoredVersion:
    """From an ORM object or a Core row alike: both name the columns."""
    return StoredVersion(row.id, row.content_hash, row.path, row.first_loaded_at, row.text)
