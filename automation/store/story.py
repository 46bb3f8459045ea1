"""One launch story: a launch, the webhook that caused it, every API call it rode in,
and why it ended where it did.

The CLI (`launches show`, `launches list --json`), the read API (`/api/launches`,
`/api/launches/<id>`, `/api/deliveries/<id>`) and the console all render these records;
none of them queries the tables itself, so they cannot tell different stories.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Self

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from automation.events.payloads import ENTITY_KINDS
from automation.limits import MAX_ID
from automation.store.launchlog import LaunchQuery, launch_filters
from automation.store.models import ApiCall, CallLaunch, Delivery, Launch
from automation.store.states import DeliveryStatus, LaunchStatus


def _columns(cls: type[Any], table: type[Any]) -> list[Any]:
    """The table's columns named like the record's fields (the record may add some)."""
    return [getattr(table, f.name) for f in fields(cls) if hasattr(table, f.name)]


@dataclass(frozen=True, slots=True)
class LaunchRecord:
    """One launch-log entry: a bot to start on an entity, and where it got to."""

    id: int
    delivery_id: int | None
    rule: str
    event_type: str
    event_group: str
    event_index: int
    bot_id: int
    entity_type: int
    #: `lead`, `contact`, `company` or `customer`; None for a code we do not know.
    entity: str | None
    entity_id: int
    change_key: str
    status: LaunchStatus
    reason: str | None
    not_before: datetime
    attempts: int
    retries: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    sending_at: datetime | None
    settled_at: datetime | None
    claimed_by: str | None
    call_id: int | None

    @classmethod
    def from_row(cls, row: Any) -> Self:
        values = dict(row._mapping)
        return cls(**values, entity=ENTITY_KINDS.get(values["entity_type"]))

    @property
    def entity_kind(self) -> str | None:
        """The launch-log view's name for `entity` (its SQL column keeps it)."""
        return self.entity

    @property
    def target(self) -> str:
        """`lead 27754599`: what the bot runs on, as people say it."""
        return f"{self.entity or self.entity_type} {self.entity_id}"


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A stored webhook without its body."""

    id: int
    received_at: datetime
    remote_addr: str | None
    content_type: str
    account_id: int | None
    account_subdomain: str | None
    event_count: int
    launch_count: int
    duplicate_count: int
    status: DeliveryStatus


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One request to amoCRM that carried the launch, at `position` in its body."""

    id: int
    position: int
    dispatcher: str
    endpoint: str
    launch_count: int
    started_at: datetime
    finished_at: datetime | None
    status_code: int | None
    outcome: str | None
    error: str | None
    response_excerpt: str | None


@dataclass(frozen=True, slots=True)
class LaunchStory:
    """Everything known about one launch, from the webhook to its last status."""

    launch: LaunchRecord
    delivery: DeliveryRecord | None
    #: Every call it rode in, oldest first.
    calls: tuple[CallRecord, ...]

    @property
    def settling_call(self) -> CallRecord | None:
        """The call that settled the launch (or carries it now)."""
        return next((call for call in self.calls if call.id == self.launch.call_id), None)


@dataclass(frozen=True, slots=True)
class LaunchPage:
    """A page of launches, newest first; `next_cursor` None on the last page."""

    launches: tuple[LaunchRecord, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DeliveryStory:
    """A stored webhook, its body and the launches it caused, by id."""

    delivery: DeliveryRecord
    body: bytes
    launches: tuple[LaunchRecord, ...]


_LAUNCH: Select[Any] = select(*_columns(LaunchRecord, Launch))
_DELIVERY: Select[Any] = select(*_columns(DeliveryRecord, Delivery))
_CALLS: Select[Any] = select(*_columns(CallRecord, ApiCall), CallLaunch.position).join(
    CallLaunch, CallLaunch.call_id == ApiCall.id
)


def launch_page(session: Session, query: LaunchQuery) -> LaunchPage:
    """One page, newest first; keyset paging by id so pages stay stable under inserts."""
    statement = (
        _LAUNCH.where(*launch_filters(Launch.__table__.c, query))
        .order_by(Launch.id.desc())
        .limit(query.limit + 1)
    )
    rows = [LaunchRecord.from_row(row) for row in session.execute(statement)]
    page = tuple(rows[: query.limit])
    more = len(rows) > query.limit
    return LaunchPage(page, str(page[-1].id) if more else None)


def launch_story(session: Session, launch_id: int) -> LaunchStory | None:
    """The story of launch `launch_id`, or None when there is no such launch."""
    if launch_id > MAX_ID:
        return None
    row = session.execute(_LAUNCH.where(Launch.id == launch_id)).first()
    if row is None:
        return None
    launch = LaunchRecord.from_row(row)
    delivery = _delivery(session, launch.delivery_id) if launch.delivery_id else None
    calls = session.execute(
        _CALLS.where(CallLaunch.launch_id == launch_id).order_by(ApiCall.started_at, ApiCall.id)
    )
    return LaunchStory(launch, delivery, tuple(CallRecord(**row._mapping) for row in calls))


def delivery_story(session: Session, delivery_id: int) -> DeliveryStory | None:
    """The delivery, its body and the launches it caused, or None when there is none."""
    if delivery_id > MAX_ID:
        return None
    delivery = _delivery(session, delivery_id)
    if delivery is None:
        return None
    body = session.execute(select(Delivery.body).where(Delivery.id == delivery_id)).scalar_one()
    launches = session.execute(_LAUNCH.where(Launch.delivery_id == delivery_id).order_by(Launch.id))
    return DeliveryStory(delivery, bytes(body), tuple(map(LaunchRecord.from_row, launches)))


def _delivery(session: Session, delivery_id: int) -> DeliveryRecord | None:
    row = session.execute(_DELIVERY.where(Delivery.id == delivery_id)).first()
    return DeliveryRecord(**row._mapping) if row is not None else None
