"""The request budget to amoCRM, shared by every dispatcher through the database.

amoCRM allows about 7 requests a second per integration, answers 429 beyond that, and
blocks the account (403 for everything) when an integration keeps pushing. So the
budget is counted where all dispatchers see it: a slot is the `api_calls` row itself,
taken while holding the one `rate_limits` row, so N dispatchers together never start
more than `max_rps` calls in any window of one second plus a margin. A 429 or 403 seen
by one dispatcher puts a hold on the row that stops them all.

The margin is there because our clock reads when the call row is written and amoCRM's
when the request arrives, later by a varying delay: `max_rps` requests are spaced a
second plus the margin apart, so amoCRM's second holds no more as long as the delay
varies by less than the margin (AMOCRM_RATE_MARGIN_MS).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Executable, Integer, bindparam, select, update
from sqlalchemy.orm import Session
from tenacity import RetryCallState, Retrying, wait_exponential

from automation.store.database import for_update, insert_ignoring
from automation.store.fastsql import CompiledStatement
from automation.store.models import ApiCall, RateLimit

NAME = "amocrm"
SECOND = timedelta(seconds=1)
#: The default margin: enough on loopback and a quiet host (AMOCRM_RATE_MARGIN_MS).
MARGIN = timedelta(milliseconds=30)
#: Longest back-off after repeated 429s.
MAX_BACKOFF = timedelta(seconds=60)
#: Longest hold after repeated 5xx answers or connection failures: amoCRM is down, and
#: one probing call every 5 minutes is enough to notice it is back.
MAX_FAILURE_HOLD = timedelta(minutes=5)
#: The longest `Retry-After` a 429 can impose.
MAX_RETRY_AFTER = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may start now, and if not, for how long to wait and why."""

    wait: float
    #: The clock read after the budget row was locked: the call's start time.
    now: datetime
    reason: str | None = None

    @property
    def go(self) -> bool:
        return self.wait <= 0


def take(session: Session, max_rps: float, call_id: int, margin: timedelta = MARGIN) -> Verdict:
    """Take a request slot for call `call_id`, inserted earlier in this transaction;
    on success the caller stamps the call with `Verdict.now` and commits.

    Locks the budget row first (PostgreSQL `FOR UPDATE`; SQLite holds its write lock
    from BEGIN), so that the count and the caller's stamp are one atomic step. The
    clock is read only once the lock is held: a time read before waiting for the lock
    would be stale, and a stale start time lets the next dispatcher go early.
    """
    connection = session.connection()
    hold_row = _hold(connection, _HOLD_LOCKED)
    if hold_row is None:  # first use: create the row, then lock it
        _locked_row(session, datetime.now(UTC))
        hold_row = _hold(connection, _HOLD_LOCKED)
    return _verdict(session, hold_row, max_rps, SECOND + margin, datetime.now(UTC), call_id)


def peek(session: Session, max_rps: float, margin: timedelta = MARGIN) -> Verdict:
    """How long until a slot frees, without locking: a cheap look before claiming work
    that a refusal would only roll back."""
    hold_row = _hold(session.connection(), _HOLD)
    return _verdict(session, hold_row, max_rps, SECOND + margin, datetime.now(UTC), None)


def _hold(connection: Connection, statement: CompiledStatement) -> tuple[Any, ...] | None:
    rows = statement.typed_rows(connection, {})
    return rows[0] if rows else None


# The dispatcher reads the hold and the window twice per call: compiled once (`fastsql`).
def _hold_query(dialect: str, locked: bool) -> Executable:
    query = select(RateLimit.hold_until, RateLimit.hold_reason).where(RateLimit.name == NAME)
    if locked and dialect == "postgresql":
        return query.with_for_update()
    return query


_HOLD = CompiledStatement(lambda dialect: _hold_query(dialect, locked=False))
#: Taking a slot locks the row (PostgreSQL; SQLite holds its write lock from BEGIN).
_HOLD_LOCKED = CompiledStatement(lambda dialect: _hold_query(dialect, locked=True))
#: The limit-th most recent start inside the window, if there is one: the slot frees
#: when it leaves the window. One row, however high AMOCRM_MAX_RPS is.
_WINDOW = CompiledStatement(
    lambda _: (
        select(ApiCall.started_at)
        .where(
            ApiCall.started_at > bindparam("since", type_=ApiCall.started_at.type),
            ApiCall.outcome.is_distinct_from("dry_run"),
            ApiCall.id != bindparam("exclude", type_=ApiCall.id.type),
        )
        .order_by(ApiCall.started_at.desc())
        .offset(bindparam("skip", type_=Integer))
        .limit(1)
    )
)


def _verdict(
    session: Session,
    hold_row: tuple[Any, ...] | None,
    max_rps: float,
    window: timedelta,
    now: datetime,
    exclude: int | None,
) -> Verdict:
    until: datetime | None = hold_row[0] if hold_row is not None else None
    if until is not None and until > now:
        assert hold_row is not None
        return Verdict((until - now).total_seconds(), now, hold_row[1])
    limit = max(1, int(max_rps))
    values = {"since": now - window, "skip": limit - 1, "exclude": exclude or 0}
    oldest = _WINDOW.typed_rows(session.connection(), values)
    if not oldest:
        return Verdict(0.0, now)
    wait = (oldest[0][0] + window - now).total_seconds()
    return Verdict(max(wait, 0.001), now, "rate limit")


def hold(session: Session, until: datetime, reason: str, now: datetime) -> None:
    """Stop every dispatcher from sending until `until` (a 403, a lost token)."""
    state = _locked_row(session, now)
    if state.hold_until is None or state.hold_until < until:
        state.hold_until = until
        state.hold_reason = reason
    state.updated_at = now


def rate_limited(session: Session, now: datetime, retry_after: float | None = None) -> timedelta:
    """Record a 429: every dispatcher backs off, longer with each 429 in a row, and at
    least as long as the answer's `Retry-After` asked (up to an hour: a bogus header
    must not stop sending for good)."""
    state = _locked_row(session, now)
    state.consecutive_429 += 1
    backoff = _doubling(state.consecutive_429, MAX_BACKOFF)
    if retry_after is not None:
        backoff = max(backoff, min(timedelta(seconds=retry_after), MAX_RETRY_AFTER))
    hold(session, now + backoff, f"rate limited by amoCRM (429 #{state.consecutive_429})", now)
    return backoff


def failed(session: Session, now: datetime, what: str) -> timedelta:
    """Record a 5xx answer or a connection failure: every dispatcher holds, longer with
    each failure in a row (1 s, 2 s, 4 s … up to `MAX_FAILURE_HOLD`), so an amoCRM
    outage gets one probing call at a time and the launches keep their batches."""
    state = _locked_row(session, now)
    state.consecutive_failures += 1
    streak = state.consecutive_failures
    backoff = failure_hold(streak)
    hold(session, now + backoff, f"amoCRM failing: {what} (failure #{streak} in a row)", now)
    return backoff


def failure_hold(streak: int) -> timedelta:
    """Pure: how long everyone holds after the `streak`-th failure in a row."""
    return _doubling(streak, MAX_FAILURE_HOLD)


def _doubling(streak: int, longest: timedelta) -> timedelta:
    """1 s, 2 s, 4 s … up to `longest` for the `streak`-th in a row: tenacity's
    exponential wait, asked for one attempt's value. The streak lives in the database
    (every dispatcher shares it), so no Retrying loop of ours holds it."""
    attempt = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    attempt.attempt_number = streak
    wait = wait_exponential(multiplier=1, min=1, max=longest.total_seconds())
    return timedelta(seconds=wait(attempt))


def succeeded(session: Session, now: datetime) -> None:
    """A request went through: forget the 429 and failure streaks (holds run out by
    themselves). One UPDATE that usually matches nothing: no lock on the hot path."""
    _SUCCEEDED.execute(session.connection(), {"now_": now})


_SUCCEEDED = CompiledStatement(
    lambda _: (
        update(RateLimit)
        .where(
            RateLimit.name == NAME,
            (RateLimit.consecutive_429 > 0) | (RateLimit.consecutive_failures > 0),
        )
        .values(consecutive_429=0, consecutive_failures=0, updated_at=bindparam("now_"))
    )
)


def current_hold(session: Session, now: datetime) -> RateLimit | None:
    """The active hold, if any, for `/healthz`."""
    state = session.get(RateLimit, NAME)
    if state is None or state.hold_until is None or state.hold_until <= now:
        return None
    return state


def _locked_row(session: Session, now: datetime) -> RateLimit:
    query = for_update(session, select(RateLimit).where(RateLimit.name == NAME))
    state = session.execute(query).scalar_one_or_none()
    if state is None:  # first use: two dispatchers may both get here, one insert wins
        session.execute(
            insert_ignoring(session, RateLimit)
            .values(name=NAME, consecutive_429=0, consecutive_failures=0, updated_at=now)
            .on_conflict_do_nothing()
        )
        state = session.execute(query).scalar_one()
    return state
