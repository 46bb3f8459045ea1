"""The console's view of the launch log: filtered pages and counts that stay fast on
millions of rows.

Pages are keyset-paged on (created_at, id), newest first, so every page costs an
index walk however deep it is, and counts stop at a cap ("10,000+") instead of
scanning a status with a million rows. Indexes: `ix_launches_status_created`,
`ix_launches_rule_created`, `ix_launches_bot_created`, `ix_launches_target` and
`created_at`'s own, one for each way the console narrows the list.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal, select, tuple_
from sqlalchemy.orm import Session

from automation.store.launchlog import LaunchQuery, launch_filters
from automation.store.models import Launch
from automation.store.states import LaunchStatus

#: The list's counts stop here: "1,000+" says enough, and counting further costs an
#: index scan per tab on every refresh.
COUNT_CAP = 1_000
#: Launches a bulk action changes at most in one go.
BULK_LIMIT = 100_000
_CURSOR = re.compile(r"([0-9]{1,20})\.([0-9]{1,20})")


@dataclass(frozen=True, slots=True)
class LaunchFilter:
    """What the console's list shows: the launch-log filters plus the entity's kind."""

    query: LaunchQuery = field(default_factory=LaunchQuery)
    #: amoCRM's entity code (lead 2, contact 1, …), from `lead:123` in the search box.
    entity_type: int | None = None

    def conditions(self) -> Iterator[ColumnElement[bool]]:
        yield from launch_filters(Launch.__table__.c, replace(self.query, before_id=None))
        if self.entity_type is not None:
            yield Launch.entity_type == self.entity_type

    def with_statuses(self, statuses: Sequence[LaunchStatus]) -> LaunchFilter:
        return replace(self, query=replace(self.query, statuses=tuple(statuses)))


@dataclass(frozen=True, slots=True)
class ListRow:
    """One launch as a row of the console's table."""

    id: int
    status: LaunchStatus
    rule: str
    bot_id: int
    entity_type: int
    entity_id: int
    created_at: datetime
    settled_at: datetime | None
    attempts: int
    reason: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: below this (created_at, id)."""

    created_at: datetime
    id: int

    def encode(self) -> str:
        micros = round(self.created_at.timestamp() * 1_000_000)
        return f"{micros}.{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError when `text` is not a cursor this module made."""
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(f"expected the cursor of a previous page, got {text!r}")
        try:
            moment = datetime.fromtimestamp(int(match[1]) / 1_000_000, UTC)
        except (OverflowError, ValueError, OSError):
            raise ValueError(f"expected the cursor of a previous page, got {text!r}") from None
        return cls(moment, int(match[2]))


_COLUMNS = (
    Launch.id,
    Launch.status,
    Launch.rule,
    Launch.bot_id,
    Launch.entity_type,
    Launch.entity_id,
    Launch.created_at,
    Launch.settled_at,
    Launch.attempts,
    Launch.reason,
    Launch.last_error,
)


def page(
    session: Session, where: LaunchFilter, limit: int, after: Cursor | None = None
) -> tuple[list[ListRow], Cursor | None]:
    """Up to `limit` launches, newest first, below `after`; and the next page's cursor."""
    statement = select(*_COLUMNS).where(*where.conditions())
    if after is not None:
        key = tuple_(Launch.created_at, Launch.id)
        statement = statement.where(key < tuple_(_bound(after.created_at), after.id))
    statement = statement.order_by(Launch.created_at.desc(), Launch.id.desc()).limit(limit + 1)
    rows = [ListRow(**row._asdict()) for row in session.execute(statement)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, Cursor(rows[-1].created_at, rows[-1].id) if more else None


def _bound(moment: datetime) -> Any:
    """A bound value typed like the column (naive UTC, as stored)."""
    return literal(moment, Launch.created_at.type)


def capped_count(session: Session, where: LaunchFilter, cap: int | None = None) -> int:
    """How many launches match, counting no further than `cap + 1` (`COUNT_CAP + 1`)."""
    cap = COUNT_CAP if cap is None else cap
    inner = select(Launch.id).where(*where.conditions()).limit(cap + 1).subquery()
    return int(session.execute(select(func.count()).select_from(inner)).scalar_one())


def status_counts(
    session: Session, where: LaunchFilter, cap: int | None = None
) -> dict[LaunchStatus, int]:
    """Capped counts for each status, the other filters applied: the tabs' numbers."""
    return {
        status: capped_count(session, where.with_statuses([status]), cap) for status in LaunchStatus
    }


def matching_count(
    session: Session,
    where: LaunchFilter,
    statuses: Sequence[LaunchStatus],
) -> int:
    """How many matching launches are in `statuses`, exactly: a bulk action's N."""
    allowed = _intersect(where.query.statuses, statuses)
    if not allowed:
        return 0
    inner = select(Launch.id).where(*where.with_statuses(allowed).conditions()).subquery()
    return int(session.execute(select(func.count()).select_from(inner)).scalar_one())


def matching_ids(
    session: Session,
    where: LaunchFilter,
    statuses: Sequence[LaunchStatus],
    up_to_id: int | None = None,
) -> list[int]:
    """Ids of matching launches in `statuses` (and at most `up_to_id`), oldest first;
    at most `BULK_LIMIT`: what a bulk action is about to change."""
    allowed = _intersect(where.query.statuses, statuses)
    if not allowed:
        return []
    narrowed = where.with_statuses(allowed)
    statement: Select[Any] = select(Launch.id).where(*narrowed.conditions())
    if up_to_id is not None:
        statement = statement.where(Launch.id <= up_to_id)
    statement = statement.order_by(Launch.id).limit(BULK_LIMIT)
    return list(session.execute(statement).scalars())


def _intersect(
    chosen: Sequence[LaunchStatus], allowed: Sequence[LaunchStatus]
) -> tuple[LaunchStatus, ...]:
    """The filter's statuses that the action allows; all allowed when none is chosen."""
    if not chosen:
        return tuple(allowed)
    return tuple(status for status in chosen if status in allowed)


def newest_id(session: Session) -> int:
    """The highest launch id now (0 for none): bulk actions stop there."""
    return int(session.execute(select(func.coalesce(func.max(Launch.id), 0))).scalar_one())
