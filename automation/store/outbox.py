"""All SQL of the launch outbox's dispatcher side behind one door.

`intake` puts launches in (with the webhook that carried them); this module takes
them out: claims due launches, records the API calls made for them, settles, retries
and releases them, and recovers what a crashed dispatcher left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import BindParameter, bindparam, insert, select, update
from sqlalchemy.orm import Session

from automation.store import states
from automation.store.database import rowcount
from automation.store.models import ApiCall, CallLaunch, Launch
from automation.store.states import LaunchStatus

if TYPE_CHECKING:
    pass

#: How much of amoCRM's answer an API call keeps.
EXCERPT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Claimed:
    """A launch a dispatcher holds while it is `sending`."""

    id: int
    bot_id: int
    entity_type: int
    entity_id: int
    retries: int


def claim_due(session: Session, dispatcher: str, now: datetime, limit: int = 100) -> list[Claimed]:
    """Take up to `limit` due pending launches, oldest first, and mark them `sending`.

    On PostgreSQL rows locked by another dispatcher's claim are skipped
    (`FOR UPDATE SKIP LOCKED`); on SQLite the write lock taken at BEGIN does the same.
    """
    connection = session.connection()
    query = _claim_query(connection.dialect.name)
    claimed = [Claimed(*row) for row in connection.execute(query, {"now_": now, "n": limit})]
    if claimed:
        ids = [launch.id for launch in claimed]
        connection.execute(_MARK_SENDING, {"ids": ids, "now_": now, "by": dispatcher})
    return claimed


def start_call(
    session: Session, dispatcher: str, endpoint: str, launches: Sequence[Claimed], now: datetime
) -> int:
    """Record an API call and the launches in it; commit this BEFORE sending.

    After a crash, a launch whose call row exists may have reached amoCRM; one
    without may not. That is how recovery tells `uncertain` from `pending`.
    """
    connection = session.connection()
    values = {"dispatcher": dispatcher, "endpoint": endpoint, "launch_count": len(launches)}
    call_id = int(connection.execute(_INSERT_CALL, {**values, "started_at": now}).scalar_one())
    ids = [launch.id for launch in launches]
    connection.execute(
        insert(CallLaunch),
        [{"call_id": call_id, "launch_id": id_, "position": i} for i, id_ in enumerate(ids)],
    )
    connection.execute(_MARK_IN_CALL, {"ids": ids, "call": call_id, "now_": now})
    return call_id


# The dispatcher's statements are built once: with 100 ids a statement built per call
# spent more time coercing parameters than the database spent running it.
_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
_MARK_SENDING = (
    update(Launch)
    .where(Launch.id.in_(_IDS))
    .values(
        status=LaunchStatus.SENDING,
        sending_at=bindparam("now_"),
        updated_at=bindparam("now_"),
        claimed_by=bindparam("by"),
    )
)
_MARK_IN_CALL = (
    update(Launch)
    .where(Launch.id.in_(_IDS))
    .values(call_id=bindparam("call"), attempts=Launch.attempts + 1, updated_at=bindparam("now_"))
)
_INSERT_CALL = insert(ApiCall).returning(ApiCall.id)


@cache
def _claim_query(dialect: str) -> Any:
    query = (
        select(Launch.id, Launch.bot_id, Launch.entity_type, Launch.entity_id, Launch.retries)
        .where(Launch.status == LaunchStatus.PENDING, Launch.not_before <= bindparam("now_"))
        .order_by(Launch.not_before, Launch.id)
        .limit(bindparam("n"))
    )
    return query.with_for_update(skip_locked=True) if dialect == "postgresql" else query


def stamp_call(session: Session, call_id: int, started_at: datetime) -> None:
    """Set a call's start to the moment its request slot was granted."""
    session.execute(update(ApiCall).where(ApiCall.id == call_id).values(started_at=started_at))


def finish_call(
    session: Session,
    call_id: int,
    now: datetime,
    *,
    outcome: str,
    status_code: int | None = None,
    error: str | None = None,
    excerpt: str | None = None,
) -> None:
    """Record how an API call ended."""
    session.execute(
        update(ApiCall)
        .where(ApiCall.id == call_id)
        .values(
            finished_at=now,
            outcome=outcome,
            status_code=status_code,
            error=error,
            response_excerpt=excerpt[:EXCERPT_CHARS] if excerpt else excerpt,
        )
    )


def settle(
    session: Session,
    ids: Sequence[int],
    status: LaunchStatus,
    now: datetime,
    reason: str | None = None,
) -> None:
    """Move launches to a final status (`sent`, `failed`, `uncertain`, `dry_run`)."""
    if not ids:
        return
    is_error = status in (LaunchStatus.FAILED, LaunchStatus.UNCERTAIN)
    statement = _SETTLE_WITH_ERROR if is_error else _SETTLE
    params = {"ids": list(ids), "new_status": status, "now_": now, "why": reason}
    session.connection().execute(statement, params)


_SETTLE = (
    update(Launch)
    .where(Launch.id.in_(_IDS))
    .values(
        status=bindparam("new_status"),
        settled_at=bindparam("now_"),
        updated_at=bindparam("now_"),
        reason=bindparam("why"),
        claimed_by=None,
    )
)
_SETTLE_WITH_ERROR = _SETTLE.values(last_error=bindparam("why"))


def retry_later(
    session: Session, launch: Claimed, not_before: datetime, now: datetime, error: str
) -> None:
    """Back to `pending` after a retryable failure; it counts against the budget."""
    session.execute(
        update(Launch)
        .where(Launch.id == launch.id)
        .values(
            status=LaunchStatus.PENDING,
            not_before=not_before,
            retries=Launch.retries + 1,
            last_error=error,
            reason=f"retry after: {error}",
            claimed_by=None,
            updated_at=now,
        )
    )


def release(session: Session, ids: Sequence[int], now: datetime, reason: str | None = None) -> None:
    """Back to `pending` without counting a retry: the launch was never at fault
    (shutdown, a paused account)."""
    if ids:
        session.execute(
            update(Launch)
            .where(Launch.id.in_(ids), Launch.status == LaunchStatus.SENDING)
            .values(status=LaunchStatus.PENDING, claimed_by=None, updated_at=now, reason=reason)
        )


def recover_orphans(session: Session, live: Sequence[str], now: datetime) -> tuple[int, int]:
    """Launches left `sending` by a dispatcher that is gone.

    If their call started but never finished, they become `uncertain`: amoCRM may have
    started the bot already, and a second launch would message the customer twice.
    Otherwise (no call yet, or a call that ended with an answer, such as a 400 being
    bisected) nothing reached amoCRM's bots: back to `pending`. Returns (pending,
    uncertain).
    """
    orphaned = Launch.status == LaunchStatus.SENDING
    if live:
        orphaned = orphaned & (Launch.claimed_by.is_(None) | Launch.claimed_by.not_in(live))
    unfinished = select(ApiCall.id).where(ApiCall.finished_at.is_(None))
    in_unfinished_call = Launch.call_id.in_(unfinished)
    unstarted = rowcount(
        session.execute(
            update(Launch)
            .where(orphaned, ~in_unfinished_call | Launch.call_id.is_(None))
            .values(status=LaunchStatus.PENDING, claimed_by=None, updated_at=now)
        )
    )
    in_flight = rowcount(
        session.execute(
            update(Launch)
            .where(orphaned, in_unfinished_call)
            .values(
                status=LaunchStatus.UNCERTAIN,
                settled_at=now,
                updated_at=now,
                claimed_by=None,
                reason="uncertain: the dispatcher stopped while its request was in flight",
            )
            .execution_options(synchronize_session=False)
        )
    )
    return unstarted, in_flight


def release_claims(session: Session, dispatcher: str, now: datetime) -> None:
    """A stopping dispatcher gives back what it claimed but has not sent."""
    held = session.execute(
        select(Launch.id).where(
            Launch.claimed_by == dispatcher,
            Launch.status == LaunchStatus.SENDING,
            Launch.call_id.is_(None),
        )
    ).scalars()
    release(session, list(held), now, reason="released: dispatcher stopped")


# ------------------------------------------------------------------ the operator's side


def retry(
    session: Session, ids: Sequence[int], now: datetime, reason: str = "retried by operator"
) -> list[int]:
    """Failed, uncertain or cancelled launches back to `pending`, due now.

    The retry budget starts afresh (an operator retries after fixing the cause, and a
    launch that spent its budget would otherwise fail at the first hiccup). Rows that
    left those statuses meanwhile are not touched; returns the ids that changed.
    """
    values = {"status": LaunchStatus.PENDING, "not_before": now, "settled_at": None}
    values |= {"retries": 0, "reason": reason, "claimed_by": None, "updated_at": now}
    return _transition(session, ids, states.RETRYABLE, values)


def cancel(
    session: Session, ids: Sequence[int], now: datetime, reason: str = "cancelled by operator"
) -> list[int]:
    """Pending launches to `cancelled`; a launch a dispatcher claimed meanwhile is
    not touched. Returns the ids that changed."""
    values = {"status": LaunchStatus.CANCELLED, "settled_at": now, "reason": reason}
    values |= {"claimed_by": None, "updated_at": now}
    return _transition(session, ids, states.CANCELLABLE, values)


def _transition(
    session: Session,
    ids: Sequence[int],
    allowed: Sequence[LaunchStatus],
    values: dict[str, object],
) -> list[int]:
    """One guarded UPDATE: the status check and the change are atomic."""
    if not ids:
        return []
    changed = session.execute(
        update(Launch)
        .where(Launch.id.in_(ids), Launch.status.in_(allowed))
        .values(**values)
        .returning(Launch.id)
        .execution_options(synchronize_session=False)
    ).scalars()
    return sorted(changed)
