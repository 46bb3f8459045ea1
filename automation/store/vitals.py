"""What the database says about the server's health: the backlog, the last webhook
stored, the last dispatcher heartbeat, how the recent amoCRM calls went.

`/healthz`, the `/metrics` gauges and `automation webhooks status` read these facts
from the shared database rather than from a process, so every web host tells the same
story and a restart resets nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from automation.store.models import ApiCall, Delivery, DispatcherRow, Launch, QueuedDelivery
from automation.store.states import LaunchStatus


@dataclass(frozen=True, slots=True)
class Vitals:
    """What a scrape reads from the database."""

    due: int
    oldest_due: datetime | None
    last_heartbeat: datetime | None
    last_webhook: datetime | None
    #: Large deliveries stored raw whose launches are not expanded yet (`store.queue`).
    queued: int = 0
    oldest_queued: datetime | None = None
    #: Of those no dispatcher holds: since when the longest-waiting one has waited for
    #: one (its arrival, or when its last holder let go of it or stored its last chunk).
    unclaimed_since: datetime | None = None
    #: Of those a dispatcher holds: the oldest last progress (`claimed_at` moves with
    #: every chunk stored), so a big body still making progress is not stalled.
    stalled_since: datetime | None = None


def read_vitals(session: Session, now: datetime) -> Vitals:
    """One round trip: COUNT and MIN over `ix_launches_due` and over
    `ix_delivery_queue_waiting`, MAX over two indexed columns."""
    due = (Launch.status == LaunchStatus.PENDING, Launch.not_before <= now)
    waiting = QueuedDelivery.finished_at.is_(None)
    unclaimed = (waiting, QueuedDelivery.claim_token.is_(None))
    held = (waiting, QueuedDelivery.claim_token.is_not(None))
    since = func.coalesce(QueuedDelivery.claimed_at, QueuedDelivery.queued_at)
    row = session.execute(
        select(
            select(func.count()).select_from(Launch).where(*due).scalar_subquery(),
            select(func.min(Launch.not_before)).where(*due).scalar_subquery(),
            select(func.max(DispatcherRow.heartbeat_at)).scalar_subquery(),
            select(func.max(Delivery.received_at)).scalar_subquery(),
            select(func.count()).select_from(QueuedDelivery).where(waiting).scalar_subquery(),
            select(func.min(QueuedDelivery.queued_at)).where(waiting).scalar_subquery(),
            select(func.min(since)).where(*unclaimed).scalar_subquery(),
            select(func.min(QueuedDelivery.claimed_at)).where(*held).scalar_subquery(),
        )
    ).one()
    return Vitals(
        int(row[0] or 0), row[1], row[2], row[3], int(row[4] or 0), row[5], row[6], row[7]
    )


def last_webhook_at(session: Session) -> datetime | None:
    """When the newest stored delivery arrived (None: none yet)."""
    return session.execute(select(func.max(Delivery.received_at))).scalar()


@dataclass(frozen=True, slots=True)
class CallRecord:
    """How one finished amoCRM call ended, as `/healthz` shows the latest one."""

    started_at: datetime
    outcome: str
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class CallTally:
    """The amoCRM calls that started since a moment and finished (dry runs aside)."""

    calls: int
    #: Those whose outcome is one of the failures the caller named.
    failed: int
    #: The newest finished call, however old (None: no call ever finished).
    last: CallRecord | None


def call_tally(session: Session, since: datetime, failures: Collection[str]) -> CallTally:
    """Count the calls started at or after `since` that have an outcome, and those of
    them whose outcome is in `failures`; read the newest finished call.

    A call still in flight has no outcome yet and is not counted: it is judged when it
    ends (a read timeout makes it `uncertain`). Both queries walk `started_at`'s index.
    """
    real = (ApiCall.outcome.is_not(None), ApiCall.outcome != "dry_run")
    calls, failed = session.execute(
        select(func.count(), func.count().filter(ApiCall.outcome.in_(list(failures)))).where(
            ApiCall.started_at >= since, *real
        )
    ).one()
    row = session.execute(
        select(ApiCall.started_at, ApiCall.outcome, ApiCall.status_code, ApiCall.error)
        .where(*real)
        .order_by(ApiCall.started_at.desc(), ApiCall.id.desc())
        .limit(1)
    ).one_or_none()
    last = CallRecord(row[0], str(row[1]), row[2], row[3]) if row is not None else None
    return CallTally(int(calls or 0), int(failed or 0), last)
