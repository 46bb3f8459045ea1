"""What the database says about the server's health: the backlog, the last webhook
stored, the last dispatcher heartbeat.

`/healthz`, the `/metrics` gauges and `automation webhooks status` read these facts
from the shared database rather than from a process, so every web host tells the same
story and a restart resets nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from automation.store.models import Delivery, DispatcherRow, Launch
from automation.store.states import LaunchStatus


@dataclass(frozen=True, slots=True)
class Vitals:
    """What a scrape reads from the database."""

    due: int
    oldest_due: datetime | None
    last_heartbeat: datetime | None
    last_webhook: datetime | None


def read_vitals(session: Session, now: datetime) -> Vitals:
    """One round trip: COUNT and MIN over `ix_launches_due`, MAX over two indexed columns."""
    due = (Launch.status == LaunchStatus.PENDING, Launch.not_before <= now)
    row = session.execute(
        select(
            select(func.count()).select_from(Launch).where(*due).scalar_subquery(),
            select(func.min(Launch.not_before)).where(*due).scalar_subquery(),
            select(func.max(DispatcherRow.heartbeat_at)).scalar_subquery(),
            select(func.max(Delivery.received_at)).scalar_subquery(),
        )
    ).one()
    return Vitals(int(row[0] or 0), row[1], row[2], row[3])


def last_webhook_at(session: Session) -> datetime | None:
    """When the newest stored delivery arrived (None: none yet)."""
    return session.execute(select(func.max(Delivery.received_at))).scalar()
