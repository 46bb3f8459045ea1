"""All SQL of the launch outbox's dispatcher side behind one door.

`intake` puts launches in (with the webhook that carried them); this module takes
them out: claims due launches, records the API calls made for them, settles, retries
and releases them, and recovers what a crashed dispatcher left.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from typing import cast as typed

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    String,
    Update,
    bindparam,
    insert,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from automation.errors import ClaimLost
from automation.store import chatguard, states
from automation.store.database import rowcount
from automation.store.fastsql import CompiledInsert, CompiledStatement, each_id, in_ids
from automation.store.models import ApiCall, CallLaunch, Launch
from automation.store.states import LaunchStatus

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


@dataclass(frozen=True, slots=True)
class Batch:
    """Launches one claim holds: who claimed them, with which token.

    Every statement that moves a claimed launch on (start a call, settle, retry,
    release) matches "still `sending`, claimed by `dispatcher`, with `token`": a
    dispatcher that stalled while another recovered and re-claimed its launches
    changes nothing, and sends nothing, with a batch it held from before.
    """

    dispatcher: str
    token: str
    launches: tuple[Claimed, ...]

    @property
    def ids(self) -> list[int]:
        return [launch.id for launch in self.launches]

    def part(self, launches: Sequence[Claimed]) -> Batch:
        """Some of this claim's launches (a half of a bisect), under the same claim."""
        return Batch(self.dispatcher, self.token, tuple(launches))

    def __len__(self) -> int:
        return len(self.launches)


def claim_due(session: Session, dispatcher: str, now: datetime, limit: int = 100) -> Batch | None:
    """Take up to `limit` due pending launches, oldest first, and mark them `sending`
    under a fresh claim token. None when nothing is due.

    On PostgreSQL rows locked by another dispatcher's claim are skipped
    (`FOR UPDATE SKIP LOCKED`); on SQLite the write lock taken at BEGIN does the same.
    A `wait` launch is not due while the launch it waits for is still to be sent, and
    of several due launches on one chat only the oldest is taken: one request never
    starts two bots in one chat (`chatguard.one_per_chat`).
    """
    connection = session.connection()
    batch = _due(connection, dispatcher, now, limit)
    if batch is not None:
        params = {"ids": batch.ids, "now_": now, "by": dispatcher, "token": batch.token}
        _MARK_SENDING.execute(connection, params)
    return batch


def claim_call(
    session: Session, dispatcher: str, now: datetime, endpoint: str, limit: int = 100
) -> tuple[Batch, int] | None:
    """`claim_due` and `start_call` in one: the due launches are claimed and put in a
    new call row by ONE UPDATE. Commit this BEFORE sending; None when nothing is due."""
    connection = session.connection()
    batch = _due(connection, dispatcher, now, limit)
    if batch is None:
        return None
    call_id = _insert_call(connection, batch, endpoint, now)
    params = {"ids": batch.ids, "now_": now, "by": dispatcher, "token": batch.token}
    marked = _CLAIM_IN_CALL.execute(connection, {**params, "call": call_id})
    if marked != len(batch):  # the rows are ours: SQLite's write lock, or FOR UPDATE
        raise AssertionError(f"claimed {marked} of {len(batch)} launches selected as due")
    return batch, call_id


def _due(connection: Connection, dispatcher: str, now: datetime, limit: int) -> Batch | None:
    rows = [_DueRow._make(row) for row in _DUE.rows(connection, {"now_": now, "n": limit})]
    claimed = tuple(Claimed(*row[:5]) for row in chatguard.one_per_chat(rows))
    return Batch(dispatcher, secrets.token_hex(8), claimed) if claimed else None


class _DueRow(NamedTuple):
    id: int
    bot_id: int
    entity_type: int
    entity_id: int
    retries: int
    chat_lead_id: int | None
    chat_contact_id: int | None


def any_due(session: Session, now: datetime) -> bool:
    """Whether some pending launch is due: is there anything to wait for a slot for?"""
    return session.connection().execute(_ANY_DUE, {"now_": now}).first() is not None


_ANY_DUE = (
    select(Launch.id)
    .where(Launch.status == LaunchStatus.PENDING, Launch.not_before <= bindparam("now_"))
    .limit(1)
)


def start_call(session: Session, batch: Batch, endpoint: str, now: datetime) -> int:
    """Record an API call and the launches in it; commit this BEFORE sending.

    After a crash, a launch whose call row exists may have reached amoCRM; one
    without may not. That is how recovery tells `uncertain` from `pending`. Raises
    `ClaimLost` (the caller rolls back, call row included) when any launch of the
    batch is no longer held by this claim.
    """
    connection = session.connection()
    call_id = _insert_call(connection, batch, endpoint, now)
    marked = _MARK_IN_CALL.execute(connection, {**_held(batch), "call": call_id, "now_": now})
    if marked != len(batch):
        raise ClaimLost(
            f"{len(batch) - marked} of {len(batch)} launches of claim {batch.token} are no "
            f"longer held by {batch.dispatcher}"
        )
    return call_id


def _insert_call(connection: Connection, batch: Batch, endpoint: str, now: datetime) -> int:
    """The call row and its launches, in the order they go in the request."""
    values = {"dispatcher": batch.dispatcher, "endpoint": endpoint, "launch_count": len(batch)}
    row = _INSERT_CALL.execute(connection, {**values, "started_at": now})
    assert row is not None
    call_id = int(row[0])
    _INSERT_CALL_LAUNCHES.execute(connection, {"call": call_id, "ids": batch.ids})
    return call_id


def _held(batch: Batch) -> dict[str, Any]:
    return {"ids": batch.ids, "by": batch.dispatcher, "token": batch.token}


# The dispatcher's statements run once per batch of up to 100 launches: compiled once
# and run on the driver's cursor (`fastsql`), with the batch's ids in one bound value.
# Built per dialect: the ids are `json_each(?)` on SQLite, `= ANY(?)` on PostgreSQL.


def _status(dialect: str) -> ColumnElement[LaunchStatus]:
    """The status column, as a statement that also names the batch's ids compares it:
    written so that no index can serve the comparison (`+status` on SQLite,
    `status || ''` on PostgreSQL), and the planner looks the ids up by primary key.

    Left bare, PostgreSQL walked `ix_launches_status_created` for `status = 'sending'`
    (its statistics say few launches are `sending`), through the index entries of
    every batch claimed before: each claim and settle leaves dead entries there until
    VACUUM, so a settle took 50 ms after a few hundred batches, and the drain slowed
    as it went. tests/store/test_outbox_plans.py checks the plans on both databases.
    """
    column: ColumnElement[LaunchStatus] = Launch.status.expression
    if dialect == "sqlite":
        return UnaryExpression(column, operator=custom_op("+"), type_=Launch.status.type)
    return type_coerce(column.op("||")(literal("", String)), Launch.status.type)


def _held_where(dialect: str) -> ColumnElement[bool]:
    """The fence: still `sending`, claimed by this dispatcher, under this claim's token."""
    return (
        in_ids(Launch.id.expression, dialect)
        & (_status(dialect) == LaunchStatus.SENDING)
        & (Launch.claimed_by == bindparam("by"))
        & (Launch.claim_token == bindparam("token"))
    )


def _due_query(dialect: str) -> Select[Any]:
    query = (
        select(
            Launch.id,
            Launch.bot_id,
            Launch.entity_type,
            Launch.entity_id,
            Launch.retries,
            Launch.chat_lead_id,
            Launch.chat_contact_id,
        )
        .where(
            Launch.status == LaunchStatus.PENDING,
            Launch.not_before <= bindparam("now_"),
            ~chatguard.still_waiting(),
        )
        .order_by(Launch.not_before, Launch.id)
        .limit(bindparam("n"))
    )
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Launch)
    return typed(Select[Any], query)


_CLAIM_VALUES: dict[str, Any] = {
    "status": LaunchStatus.SENDING,
    "sending_at": bindparam("now_"),
    "updated_at": bindparam("now_"),
    "claimed_by": bindparam("by"),
    "claim_token": bindparam("token"),
}
_DUE = CompiledStatement(_due_query)
_MARK_SENDING = CompiledStatement(
    lambda dialect: (
        update(Launch).where(in_ids(Launch.id.expression, dialect)).values(**_CLAIM_VALUES)
    )
)
_CLAIM_IN_CALL = CompiledStatement(
    lambda dialect: (
        update(Launch)
        .where(in_ids(Launch.id.expression, dialect), _status(dialect) == LaunchStatus.PENDING)
        .values(**_CLAIM_VALUES, call_id=bindparam("call"), attempts=Launch.attempts + 1)
    )
)
_MARK_IN_CALL = CompiledStatement(
    lambda dialect: (
        update(Launch)
        .where(_held_where(dialect))
        .values(
            call_id=bindparam("call"), attempts=Launch.attempts + 1, updated_at=bindparam("now_")
        )
    )
)
_INSERT_CALL = CompiledInsert(lambda _: insert(ApiCall).returning(ApiCall.id))
_INSERT_CALL_LAUNCHES = CompiledStatement(
    lambda dialect: insert(CallLaunch).from_select(
        ["call_id", "launch_id", "position"],
        select(bindparam("call", type_=CallLaunch.call_id.type), *each_id(dialect)),
    )
)


def stamp_call(session: Session, call_id: int, started_at: datetime) -> None:
    """Set a call's start to the moment its request slot was granted."""
    _STAMP_CALL.execute(session.connection(), {"call": call_id, "at": started_at})


_STAMP_CALL = CompiledStatement(
    lambda _: (
        update(ApiCall).where(ApiCall.id == bindparam("call")).values(started_at=bindparam("at"))
    )
)


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
    _FINISH_CALL.execute(
        session.connection(),
        {
            "call": call_id,
            "now_": now,
            "outcome_": outcome,
            "code": status_code,
            "error_": error,
            "excerpt": excerpt[:EXCERPT_CHARS] if excerpt else excerpt,
        },
    )


_FINISH_CALL = CompiledStatement(
    lambda _: (
        update(ApiCall)
        .where(ApiCall.id == bindparam("call"))
        .values(
            finished_at=bindparam("now_"),
            outcome=bindparam("outcome_", type_=ApiCall.outcome.type),
            status_code=bindparam("code", type_=ApiCall.status_code.type),
            error=bindparam("error_", type_=ApiCall.error.type),
            response_excerpt=bindparam("excerpt", type_=ApiCall.response_excerpt.type),
        )
    )
)


def settle(
    session: Session,
    batch: Batch,
    status: LaunchStatus,
    now: datetime,
    reason: str | None = None,
) -> int:
    """Move the batch's launches to a final status (`sent`, `failed`, `uncertain`,
    `dry_run`). Returns how many moved: fewer than the batch when some were taken over.
    Launches that waited for a failed one are released: that bot never ran."""
    if not batch.launches:
        return 0
    is_error = status in (LaunchStatus.FAILED, LaunchStatus.UNCERTAIN)
    statement = _SETTLE_WITH_ERROR if is_error else _SETTLE
    params = {**_held(batch), "new_status": status, "now_": now, "why": reason}
    moved = statement.execute(session.connection(), params)
    if status == LaunchStatus.FAILED:
        chatguard.release_waiters(session.connection(), batch.ids, now)
    return moved


def accepted_late(session: Session, batch: Batch, call_id: int, now: datetime) -> int:
    """Launches of `call_id` that recovery made `uncertain` (this dispatcher stalled past
    DISPATCHER_DEAD_AFTER with the request in flight) become `sent` when the call's 202
    arrives after all: the uncertainty is gone. Only while they are still `uncertain`,
    unclaimed and in that call, so a launch an operator retried meanwhile is left alone.
    Returns how many moved."""
    params = {"ids": batch.ids, "call": call_id, "now_": now, "why": ACCEPTED_LATE}
    return _ACCEPTED_LATE.execute(session.connection(), params)


ACCEPTED_LATE = (
    "accepted by amoCRM: the answer came after this dispatcher was declared dead, "
    "which had made the launch uncertain"
)
_ACCEPTED_LATE = CompiledStatement(
    lambda dialect: (
        update(Launch)
        .where(
            in_ids(Launch.id.expression, dialect),
            _status(dialect) == LaunchStatus.UNCERTAIN,
            Launch.call_id == bindparam("call"),
            Launch.claimed_by.is_(None),
        )
        .values(
            status=LaunchStatus.SENT,
            settled_at=bindparam("now_"),
            updated_at=bindparam("now_"),
            reason=bindparam("why", type_=Launch.reason.type),
        )
    )
)


def _settle(dialect: str, with_error: bool) -> Update:
    values: dict[str, Any] = {
        "status": bindparam("new_status", type_=Launch.status.type),
        "settled_at": bindparam("now_"),
        "updated_at": bindparam("now_"),
        "reason": bindparam("why", type_=Launch.reason.type),
        "claimed_by": None,
        "claim_token": None,
    }
    if with_error:
        values["last_error"] = bindparam("why", type_=Launch.last_error.type)
    return update(Launch).where(_held_where(dialect)).values(**values)


_SETTLE = CompiledStatement(lambda dialect: _settle(dialect, with_error=False))
_SETTLE_WITH_ERROR = CompiledStatement(lambda dialect: _settle(dialect, with_error=True))


def retry_later(
    session: Session, batch: Batch, not_before: datetime, now: datetime, error: str
) -> int:
    """Back to `pending` after a retryable failure, all due at `not_before` so that
    they go out together again; it counts against their retry budget. Returns how
    many moved (fewer when some were taken over)."""
    if not batch.launches:
        return 0
    params = {**_held(batch), "due": not_before, "now_": now, "error_": error}
    params["why"] = f"retry after: {error}"
    return _RETRY_LATER.execute(session.connection(), params)


_RETRY_LATER = CompiledStatement(
    lambda dialect: (
        update(Launch)
        .where(_held_where(dialect))
        .values(
            status=LaunchStatus.PENDING,
            not_before=bindparam("due"),
            retries=Launch.retries + 1,
            last_error=bindparam("error_", type_=Launch.last_error.type),
            reason=bindparam("why", type_=Launch.reason.type),
            claimed_by=None,
            claim_token=None,
            updated_at=bindparam("now_"),
        )
    )
)


def release(
    session: Session,
    batch: Batch,
    now: datetime,
    reason: str | None = None,
    not_before: datetime | None = None,
) -> int:
    """Back to `pending` without counting a retry: the launch was never at fault
    (shutdown, a paused account, a 429). With `not_before`, due again only then.
    Returns how many moved (fewer when some were taken over)."""
    if not batch.launches:
        return 0
    params = {**_held(batch), "now_": now, "why": reason}
    statement = _RELEASE if not_before is None else _RELEASE_UNTIL
    if not_before is not None:
        params["due"] = not_before
    return statement.execute(session.connection(), params)


def _release(dialect: str, until: bool) -> Update:
    values: dict[str, Any] = {
        "status": LaunchStatus.PENDING,
        "claimed_by": None,
        "claim_token": None,
        "updated_at": bindparam("now_"),
        "reason": bindparam("why", type_=Launch.reason.type),
    }
    if until:
        values["not_before"] = bindparam("due")
    return update(Launch).where(_held_where(dialect)).values(**values)


_RELEASE = CompiledStatement(lambda dialect: _release(dialect, until=False))
_RELEASE_UNTIL = CompiledStatement(lambda dialect: _release(dialect, until=True))


def recover_orphans(session: Session, live: Sequence[str], now: datetime) -> tuple[int, int]:
    """Launches left `sending` by a dispatcher that is gone.

    If their call started but never finished, they become `uncertain`: amoCRM may have
    started the bot already, and a second launch would message the customer twice.
    Otherwise (no call yet, or a call that ended with an answer, such as a 400 being
    bisected) nothing reached amoCRM's bots: back to `pending`. Either way the claim's
    token is cleared, so the dispatcher that held it can no longer act on them.
    Returns (pending, uncertain).
    """
    orphaned = Launch.status == LaunchStatus.SENDING
    if live:
        orphaned = orphaned & (Launch.claimed_by.is_(None) | Launch.claimed_by.not_in(live))
    if session.get_bind().dialect.name == "postgresql":
        # Lock them first. A dispatcher declared dead may be committing a call for some
        # of them right now; an UPDATE that waited for its row locks would re-check the
        # rows against the unfinished calls it read before that commit, and send back
        # to `pending` what is in flight. Each statement below reads after the locks.
        session.execute(select(Launch.id).where(orphaned).with_for_update())
    unfinished = select(ApiCall.id).where(ApiCall.finished_at.is_(None))
    in_unfinished_call = Launch.call_id.in_(unfinished)
    unclaimed = {"claimed_by": None, "claim_token": None, "updated_at": now}
    unstarted = rowcount(
        session.execute(
            update(Launch)
            .where(orphaned, ~in_unfinished_call | Launch.call_id.is_(None))
            .values(status=LaunchStatus.PENDING, **unclaimed)
            .execution_options(synchronize_session=False)
        )
    )
    in_flight = rowcount(
        session.execute(
            update(Launch)
            .where(orphaned, in_unfinished_call)
            .values(
                status=LaunchStatus.UNCERTAIN,
                settled_at=now,
                reason="uncertain: the dispatcher stopped while its request was in flight",
                **unclaimed,
            )
            .execution_options(synchronize_session=False)
        )
    )
    return unstarted, in_flight


def release_claims(session: Session, dispatcher: str, now: datetime) -> int:
    """A stopping dispatcher gives back what it claimed and has not sent: launches in
    no call, or in a call that was answered (a bisect cut short). What is in a call
    without an answer (an error stopped it mid-call) is left for recovery to settle
    as `uncertain`."""
    unfinished = select(ApiCall.id).where(ApiCall.finished_at.is_(None))
    return rowcount(
        session.execute(
            update(Launch)
            .where(
                Launch.claimed_by == dispatcher,
                Launch.status == LaunchStatus.SENDING,
                Launch.call_id.is_(None) | Launch.call_id.not_in(unfinished),
            )
            .values(
                status=LaunchStatus.PENDING,
                claimed_by=None,
                claim_token=None,
                updated_at=now,
                reason="released: dispatcher stopped",
            )
            .execution_options(synchronize_session=False)
        )
    )


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
    values |= {"retries": 0, "reason": reason, "claimed_by": None, "claim_token": None}
    values["updated_at"] = now
    return _transition(session, ids, states.RETRYABLE, values)


def cancel(
    session: Session, ids: Sequence[int], now: datetime, reason: str = "cancelled by operator"
) -> list[int]:
    """Pending launches to `cancelled`; a launch a dispatcher claimed meanwhile is
    not touched. Returns the ids that changed."""
    values = {"status": LaunchStatus.CANCELLED, "settled_at": now, "reason": reason}
    values |= {"claimed_by": None, "claim_token": None, "updated_at": now}
    cancelled = _transition(session, ids, states.CANCELLABLE, values)
    chatguard.release_waiters(session.connection(), cancelled, now)
    return cancelled


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
