"""The audit of operator actions: every retry or cancel, of one launch or of a filter.

An entry is written in the same transaction as the change it records, so the log
never claims a change that was rolled back, nor misses one that was committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from automation.store.models import AuditEntry, AuditLaunch

#: Rows per INSERT of launch links: stays under SQLite's bound-parameter limit.
_CHUNK = 400


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One recorded action, as the console shows it."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    requested: int
    changed: int


def record(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    requested: int,
    changed: Sequence[int],
) -> int:
    """Write one entry and link it to the launches it changed; returns its id."""
    entry = AuditEntry(
        at=at, actor=actor, action=action, target=target, requested=requested, changed=len(changed)
    )
    session.add(entry)
    session.flush()
    links = [{"audit_id": entry.id, "launch_id": launch_id} for launch_id in changed]
    for start in range(0, len(links), _CHUNK):
        session.execute(insert(AuditLaunch), links[start : start + _CHUNK])
    return entry.id


def for_launch(session: Session, launch_id: int) -> list[AuditRow]:
    """The actions that changed launch `launch_id`, oldest first."""
    rows = session.execute(
        select(AuditEntry)
        .join(AuditLaunch, AuditLaunch.audit_id == AuditEntry.id)
        .where(AuditLaunch.launch_id == launch_id)
        .order_by(AuditEntry.id)
    ).scalars()
    return [_row(entry) for entry in rows]


def recent(session: Session, limit: int = 10) -> list[AuditRow]:
    """The newest actions first."""
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return [_row(entry) for entry in rows.scalars()]


def _row(entry: AuditEntry) -> AuditRow:
    return AuditRow(
        entry.id, entry.at, entry.actor, entry.action, entry.target, entry.requested, entry.changed
    )


def add_changes(session: Session, audit_id: int, changed: Sequence[int]) -> None:
    """Link more changed launches to entry `audit_id` (a bulk action's next chunk)."""
    links = [{"audit_id": audit_id, "launch_id": launch_id} for launch_id in changed]
    for start in range(0, len(links), _CHUNK):
        session.execute(insert(AuditLaunch), links[start : start + _CHUNK])
    session.execute(
        update(AuditEntry)
        .where(AuditEntry.id == audit_id)
        .values(changed=AuditEntry.changed + len(links))
    )
