"""The dispatcher registry: who is sending, and who died while sending.

Each dispatcher process has a row with a heartbeat. A row whose heartbeat is older than
DISPATCHER_DEAD_AFTER is a dead dispatcher: its claims are recovered by the living (see
`outbox.recover_orphans`), and on SQLite a live row keeps a second dispatcher out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from automation.store.database import rowcount
from automation.store.fastsql import CompiledStatement
from automation.store.models import DispatcherRow


def register(session: Session, dispatcher: str, host: str, pid: int, now: datetime) -> None:
    """Record a starting dispatcher, its heartbeat taken now."""
    session.add(DispatcherRow(id=dispatcher, host=host, pid=pid, started_at=now, heartbeat_at=now))


def live_other(
    session: Session, dispatcher: str, now: datetime, dead_after: timedelta
) -> str | None:
    """The id of a live dispatcher other than `dispatcher`, if there is one."""
    return session.execute(
        select(DispatcherRow.id)
        .where(
            DispatcherRow.stopped_at.is_(None),
            DispatcherRow.heartbeat_at > now - dead_after,
            DispatcherRow.id != dispatcher,
        )
        .limit(1)
    ).scalar_one_or_none()


def live_ids(session: Session, now: datetime, dead_after: timedelta) -> list[str]:
    """Every dispatcher whose heartbeat is recent enough to count it alive."""
    rows = session.execute(
        select(DispatcherRow.id).where(
            DispatcherRow.stopped_at.is_(None),
            DispatcherRow.heartbeat_at > now - dead_after,
        )
    )
    return list(rows.scalars())


def beat(session: Session, dispatcher: str, now: datetime) -> bool:
    """The heartbeat: `dispatcher` is alive at `now`. False when its row was stopped
    (another dispatcher declared it dead): a stopped row is never revived."""
    changed = session.execute(
        update(DispatcherRow)
        .where(DispatcherRow.id == dispatcher, DispatcherRow.stopped_at.is_(None))
        .values(heartbeat_at=now)
    )
    return rowcount(changed) == 1


def is_stopped(session: Session, dispatcher: str) -> bool:
    """Whether `dispatcher`'s row is stopped (or gone): its claims may have been taken
    over, so it must not act on any of them again."""
    rows = _STOPPED_AT.rows(session.connection(), {"id_": dispatcher})
    return not rows or rows[0][0] is not None


#: Read before every call: compiled once (`fastsql`).
_STOPPED_AT = CompiledStatement(
    lambda _: select(DispatcherRow.stopped_at).where(DispatcherRow.id == bindparam("id_"))
)


def bury_dead(session: Session, now: datetime, dead_after: timedelta) -> None:
    """Mark the dispatchers whose heartbeat stopped as stopped.

    Call it before `live_ids` with the same `now`: a dispatcher is then either buried
    (stopped for good, and it notices) or counted live, never neither, so its claims
    are recovered only once its row says it is dead.
    """
    session.execute(
        update(DispatcherRow)
        .where(
            DispatcherRow.stopped_at.is_(None),
            DispatcherRow.heartbeat_at <= now - dead_after,
        )
        .values(stopped_at=now)
    )


def unregister(session: Session, dispatcher: str, now: datetime) -> None:
    """A dispatcher stops cleanly."""
    session.execute(
        update(DispatcherRow).where(DispatcherRow.id == dispatcher).values(stopped_at=now)
    )


def last_heartbeat(session: Session) -> datetime | None:
    """The newest heartbeat of any dispatcher, dead or alive (None: none ever ran)."""
    return session.execute(select(func.max(DispatcherRow.heartbeat_at))).scalar()
