"""One launch story: a launch, the webhook that caused it, every API call it rode in,
and why it ended where it did.

The CLI (`launches show`, `launches list --json`), the read API (`/api/launches`,
`/api/launches/<id>`, `/api/deliveries/<id>`) and the console all render these records;
none of them queries the tables itself, so they cannot tell different stories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Self

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from automation.events.payloads import ENTITY_KINDS
from automation.limits import MAX_ID
from automation.store.launchlog import LaunchQuery, launch_filters
from automation.store.models import ApiCall, CallLaunch, Delivery, Launch
from automation.store.states import DeliveryStatus, LaunchStatus
from automation.times import format_when


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
    #: The launch this one yielded to (`skipped`) or waits for (`pending`): another
    #: bot held the chat (one_bot_per_chat); `reason` says so in words.
    blocked_by: int | None
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
        """The `launch_log` view's name for `entity` (kept: SQL users and `--json`
        scripts read it)."""
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

    @property
    def call_id(self) -> int:
        """`id`, as `launches show --json` named it before (kept as an alias)."""
        return self.id


@dataclass(frozen=True, slots=True)
class LaunchStory:
    """Everything known about one launch, from the webhook to its last status."""

    launch: LaunchRecord
    delivery: DeliveryRecord | None
    #: Every call it rode in, oldest first.
    calls: tuple[CallRecord, ...]
    #: Why it is where it is, in one sentence (see `verdict`).
    verdict: str

    # The names `launches show` used before the CLI and the API shared this story.

    @property
    def source(self) -> DeliveryRecord | None:
        return self.delivery

    @property
    def attempts(self) -> tuple[CallRecord, ...]:
        return self.calls

    @property
    def event_group(self) -> str:
        return self.launch.event_group

    @property
    def event_index(self) -> int:
        return self.launch.event_index

    @property
    def change_key(self) -> str:
        return self.launch.change_key


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


def count_launches(session: Session, query: LaunchQuery, cap: int) -> int:
    """How many launches match `query` (its limit ignored), counting no further than
    `cap` + 1: an exact total of a million rows costs more than saying "over 10,000"."""
    matching = select(Launch.id).where(*launch_filters(Launch.__table__.c, query)).limit(cap + 1)
    return session.execute(select(func.count()).select_from(matching.subquery())).scalar_one()


def list_launches(session: Session, query: LaunchQuery) -> list[LaunchRecord]:
    """Launches matching `query`, newest first, at most `query.limit` of them."""
    return list(launch_page(session, query).launches)


def call_status_codes(session: Session, launches: Sequence[LaunchRecord]) -> dict[int, int]:
    """The HTTP status of each launch's current call, by launch id, where it has one
    (the `launch_log` view's `call_status_code`)."""
    calls = {launch.call_id: launch.id for launch in launches if launch.call_id is not None}
    rows = session.execute(select(ApiCall.id, ApiCall.status_code).where(ApiCall.id.in_(calls)))
    return {calls[call_id]: status for call_id, status in rows if status is not None}


def launches_by_id(session: Session, ids: Sequence[int]) -> dict[int, LaunchRecord]:
    """The launches among `ids` that exist, by id."""
    rows = session.execute(_LAUNCH.where(Launch.id.in_(ids)))
    return {record.id: record for record in map(LaunchRecord.from_row, rows)}


def launches_in(
    session: Session,
    statuses: Sequence[LaunchStatus],
    *,
    rule: str | None = None,
    settled_since: datetime | None = None,
) -> list[LaunchRecord]:
    """Every launch in `statuses`, oldest first, optionally of one rule and settled
    (failed, became uncertain) since a moment."""
    statement = _LAUNCH.where(Launch.status.in_(statuses))
    if rule is not None:
        statement = statement.where(Launch.rule == rule)
    if settled_since is not None:
        statement = statement.where(Launch.settled_at >= settled_since)
    return [LaunchRecord.from_row(row) for row in session.execute(statement.order_by(Launch.id))]


def launch_story(session: Session, launch_id: int) -> LaunchStory | None:
    """The story of launch `launch_id`, or None when there is no such launch."""
    if launch_id > MAX_ID:
        return None
    row = session.execute(_LAUNCH.where(Launch.id == launch_id)).first()
    if row is None:
        return None
    launch = LaunchRecord.from_row(row)
    delivery = _delivery(session, launch.delivery_id) if launch.delivery_id else None
    rows = session.execute(
        _CALLS.where(CallLaunch.launch_id == launch_id).order_by(ApiCall.started_at, ApiCall.id)
    )
    calls = tuple(CallRecord(**row._mapping) for row in rows)
    settling = next((call for call in calls if call.id == launch.call_id), None)
    return LaunchStory(launch, delivery, calls, verdict(launch, settling))


def delivery_story(
    session: Session, delivery_id: int, offset: int = 0, limit: int | None = None
) -> DeliveryStory | None:
    """The delivery, its body and the launches it caused (`limit` of them from the
    `offset`-th, by id: a bulk webhook has tens of thousands), or None when there is
    none."""
    if delivery_id > MAX_ID:
        return None
    delivery = _delivery(session, delivery_id)
    if delivery is None:
        return None
    body = session.execute(select(Delivery.body).where(Delivery.id == delivery_id)).scalar_one()
    query = _LAUNCH.where(Launch.delivery_id == delivery_id).order_by(Launch.id).offset(offset)
    launches = session.execute(query if limit is None else query.limit(limit))
    return DeliveryStory(delivery, bytes(body), tuple(map(LaunchRecord.from_row, launches)))


def _delivery(session: Session, delivery_id: int) -> DeliveryRecord | None:
    row = session.execute(_DELIVERY.where(Delivery.id == delivery_id)).first()
    return DeliveryRecord(**row._mapping) if row is not None else None


def verdict(launch: LaunchRecord, call: CallRecord | None) -> str:
    """Why a launch is where it is, in one sentence built from `reason`, `last_error`
    and the call that settled it."""
    match launch.status:
        case LaunchStatus.PENDING:
            waiting = f"pending: due at {format_when(launch.not_before)}"
            return f"{waiting} ({launch.reason})" if launch.reason else waiting
        case LaunchStatus.SENDING:
            return f"sending: in API call #{launch.call_id}, no answer recorded yet"
        case LaunchStatus.SENT:
            finished = format_when(call.finished_at if call else None)
            return f"sent: amoCRM accepted API call #{launch.call_id} at {finished}"
        case LaunchStatus.DRY_RUN:
            return "dry run: recorded, never sent (DRY_RUN was on or no token was set)"
        case LaunchStatus.FAILED:
            return (
                f"failed after {launch.attempts} API call(s): {launch.last_error or launch.reason}"
            )
        case LaunchStatus.UNCERTAIN:
            return (
                f"{launch.reason}; amoCRM may have started the bot, so it is not resent by "
                "itself (`automation launches retry` would, and may message the customer twice)"
            )
        case LaunchStatus.CANCELLED:
            return f"cancelled: {launch.reason}"
        case _:
            return f"skipped, never sent: {launch.reason}"
