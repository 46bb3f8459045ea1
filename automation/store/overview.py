"""The console's overview: what the server did lately, in a handful of indexed queries.

Each figure is one query that walks an index over a bounded range (a day, an hour,
a capped count), so the page costs the same with a thousand launches or millions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from automation.store import budget
from automation.store.browse import LaunchFilter, capped_count, status_counts
from automation.store.launchlog import LaunchQuery
from automation.store.models import ApiCall, DispatcherRow, Launch
from automation.store.states import LaunchStatus
from automation.store.vitals import last_webhook_at

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")
HOUR = timedelta(hours=1)
#: The overview's counts stop here; a day's count of one status reads only the
#: status index, so it can go further than the list's tabs.
DAY_CAP = 10_000


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A dispatcher process and when it last said it was alive."""

    id: str
    host: str
    pid: int
    heartbeat_at: datetime
    stopped_at: datetime | None


@dataclass(frozen=True, slots=True)
class CallRow:
    """One recent request to amoCRM and how it ended."""

    id: int
    started_at: datetime
    status_code: int | None
    outcome: str | None
    launch_count: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the overview page shows, read at `now`."""

    now: datetime
    last_day: dict[LaunchStatus, int]
    backlog: int
    oldest_due: datetime | None
    heartbeats: list[Heartbeat]
    hold_until: datetime | None
    hold_reason: str | None
    last_webhook: datetime | None
    calls: list[CallRow]
    #: Launches created in each of the last 24 hours, oldest hour first.
    per_hour: list[int]


def read_overview(session: Session, now: datetime) -> Overview:
    """The overview's figures at `now` (aware UTC)."""
    day = LaunchFilter(LaunchQuery(since=now - 24 * HOUR))
    hold = budget.current_hold(session, now)
    backlog, oldest = _backlog(session, now)
    return Overview(
        now=now,
        last_day=status_counts(session, day, cap=DAY_CAP),
        backlog=backlog,
        oldest_due=oldest,
        heartbeats=_heartbeats(session),
        hold_until=hold.hold_until if hold else None,
        hold_reason=hold.hold_reason if hold else None,
        last_webhook=last_webhook_at(session),
        calls=recent_calls(session),
        per_hour=per_hour(session, now),
    )


def _backlog(session: Session, now: datetime) -> tuple[int, datetime | None]:
    """Pending launches already due (capped), and the due time of the oldest."""
    due = (Launch.status == LaunchStatus.PENDING, Launch.not_before <= now)
    inner = select(Launch.id).where(*due).limit(DAY_CAP + 1).subquery()
    count = session.execute(select(func.count()).select_from(inner)).scalar_one()
    oldest = session.execute(select(func.min(Launch.not_before)).where(*due)).scalar()
    return int(count), oldest


def _heartbeats(session: Session, limit: int = 5) -> list[Heartbeat]:
    """The dispatchers heard from last first."""
    return _newest(session, Heartbeat, DispatcherRow, DispatcherRow.heartbeat_at.desc(), limit)


def recent_calls(session: Session, limit: int = 10) -> list[CallRow]:
    """The newest requests to amoCRM first."""
    return _newest(session, CallRow, ApiCall, ApiCall.id.desc(), limit)


def _newest(
    session: Session, row: type[R], model: type[Any], order: ColumnElement[Any], limit: int
) -> list[R]:
    """The `limit` newest rows of `model` by `order`, as `row`: its fields name the
    columns read, so the page shows exactly what it selects."""
    columns = [getattr(model, field.name) for field in fields(row)]
    return [
        row(**found._asdict())
        for found in session.execute(select(*columns).order_by(order).limit(limit))
    ]


def per_hour(session: Session, now: datetime, hours: int = 24) -> list[int]:
    """Launches created per hour over the last `hours` hours, oldest first.

    One range count per hour on `created_at`'s index: portable (no date functions
    that differ between SQLite and PostgreSQL) and bounded by the hour's rows.
    """
    start = now - hours * HOUR
    counts = []
    for hour in range(hours):
        lower = start + hour * HOUR
        where = LaunchFilter(LaunchQuery(since=lower, until=lower + HOUR))
        counts.append(capped_count(session, where, cap=10 * DAY_CAP))
    return counts
