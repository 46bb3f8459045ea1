"""The launch log for operators: list, explain, retry and cancel launches.

Read queries go through the `launch_log` view (migration 0003), so the CLI shows
exactly what someone with a SQL client sees. State changes go through `outbox`'s
guarded transitions, so a launch a dispatcher claimed meanwhile is left alone.
Replaying stored deliveries through rules lives in `automation.replay`. Nothing here
prints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.orm import Session

from automation.store import outbox, states
from automation.store.models import ApiCall, CallLaunch, Delivery, Launch, UTCDateTime
from automation.store.states import LaunchStatus
from automation.times import format_when

#: Longest reason shown in a table row.
REASON_WIDTH = 60

# The view is not in `models.Base.metadata`: migrations create it, and autogenerate
# must not try to create it as a table.
launch_log = Table(
    "launch_log",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("status", String(16)),
    Column("reason", Text),
    Column("rule", String(200)),
    Column("event_type", String(64)),
    Column("bot_id", BigInteger),
    Column("entity_type", Integer),
    Column("entity_kind", String(16)),
    Column("entity_id", BigInteger),
    Column("created_at", UTCDateTime()),
    Column("not_before", UTCDateTime()),
    Column("settled_at", UTCDateTime()),
    Column("attempts", Integer),
    Column("retries", Integer),
    Column("last_error", Text),
    Column("delivery_id", BigInteger),
    Column("received_at", UTCDateTime()),
    Column("account_id", BigInteger),
    Column("call_id", BigInteger),
    Column("call_status_code", Integer),
    Column("call_outcome", String(32)),
    Column("call_finished_at", UTCDateTime()),
)


# ------------------------------------------------------------------------- listing


@dataclass(frozen=True, slots=True)
class LogRow:
    """One row of the `launch_log` view: a launch, its delivery and its last API call."""

    id: int
    status: LaunchStatus
    reason: str | None
    rule: str
    event_type: str
    bot_id: int
    entity_type: int
    entity_kind: str | None
    entity_id: int
    created_at: datetime
    not_before: datetime
    settled_at: datetime | None
    attempts: int
    retries: int
    last_error: str | None
    delivery_id: int | None
    received_at: datetime | None
    account_id: int | None
    call_id: int | None
    call_status_code: int | None
    call_outcome: str | None
    call_finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> LogRow:
        values = dict(row._mapping)
        return cls(**{**values, "status": LaunchStatus(values["status"])})

    @property
    def entity(self) -> str:
        """`lead 27754599`: what the bot runs on, as people say it."""
        return f"{self.entity_kind or self.entity_type} {self.entity_id}"


@dataclass(frozen=True, slots=True)
class LaunchQuery:
    """Filters of `launches list` and `GET /api/launches`; empty ones do not filter."""

    statuses: tuple[LaunchStatus, ...] = ()
    rule: str | None = None
    bot_id: int | None = None
    entity_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    #: Only launches with a smaller id: the API's next page down.
    before_id: int | None = None


def list_launches(session: Session, query: LaunchQuery) -> list[LogRow]:
    """Launches matching `query`, newest first, at most `query.limit` of them."""
    statement = select(launch_log).where(*_filters(query))
    statement = statement.order_by(launch_log.c.id.desc()).limit(query.limit)
    return [LogRow.from_row(row) for row in session.execute(statement)]


def _filters(query: LaunchQuery) -> Iterator[ColumnElement[bool]]:
    return launch_filters(launch_log.c, query)


def launch_filters(columns: Any, query: LaunchQuery) -> Iterator[ColumnElement[bool]]:
    """The query's conditions on `columns`: the `launch_log` view's or the `launches`
    table's, which name the filtered columns alike."""
    if query.statuses:
        yield columns.status.in_(query.statuses)
    if query.rule is not None:
        yield columns.rule == query.rule
    if query.bot_id is not None:
        yield columns.bot_id == query.bot_id
    if query.entity_id is not None:
        yield columns.entity_id == query.entity_id
    if query.since is not None:
        yield columns.created_at >= query.since
    if query.until is not None:
        yield columns.created_at < query.until
    if query.before_id is not None:
        yield columns.id < query.before_id


def format_table(rows: Sequence[LogRow]) -> list[str]:
    """A readable table, one line per launch, columns padded to their widest cell."""
    header = ("ID", "STATUS", "RULE", "BOT", "ENTITY", "CREATED (UTC)", "ATTEMPTS", "REASON")
    cells = [header] + [
        (
            str(row.id),
            row.status.value,
            row.rule,
            str(row.bot_id),
            row.entity,
            f"{row.created_at:%Y-%m-%d %H:%M:%S}",
            str(row.attempts),
            _shorten(row.reason or ""),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]


def _shorten(text: str, width: int = REASON_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def as_json(value: Any) -> Any:
    """Dataclasses, lists, times and enums → what `json.dumps` takes (ISO 8601 times)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = {name: getattr(value, name) for name in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def to_json(value: Any) -> str:
    """`as_json` rendered, indented for people and still one document for scripts."""
    return json.dumps(as_json(value), ensure_ascii=False, indent=2)


# ------------------------------------------------------------------------- one story


@dataclass(frozen=True, slots=True)
class Source:
    """The webhook a launch came from."""

    delivery_id: int
    received_at: datetime
    account_id: int | None
    account_subdomain: str | None
    content_type: str
    status: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One API call a launch rode in."""

    call_id: int
    dispatcher: str
    position: int
    launch_count: int
    started_at: datetime
    finished_at: datetime | None
    status_code: int | None
    outcome: str | None
    error: str | None
    response_excerpt: str | None


@dataclass(frozen=True, slots=True)
class Story:
    """Everything known about one launch, from the webhook to its last status."""

    launch: LogRow
    event_group: str
    event_index: int
    change_key: str
    source: Source | None
    attempts: tuple[Attempt, ...]
    #: Why it ended where it did, in one sentence (see `verdict`).
    verdict: str


def show_launch(session: Session, launch_id: int) -> Story | None:
    """The story of launch `launch_id`, or None when there is no such launch."""
    row = session.execute(select(launch_log).where(launch_log.c.id == launch_id)).first()
    if row is None:
        return None
    launch = LogRow.from_row(row)
    group, index, change = session.execute(
        select(Launch.event_group, Launch.event_index, Launch.change_key).where(
            Launch.id == launch_id
        )
    ).one()
    source = _source(session, launch.delivery_id)
    attempts = _attempts(session, launch_id)
    return Story(launch, group, index, change, source, attempts, verdict(launch))


def _source(session: Session, delivery_id: int | None) -> Source | None:
    if delivery_id is None:
        return None
    row = session.execute(
        select(
            Delivery.id,
            Delivery.received_at,
            Delivery.account_id,
            Delivery.account_subdomain,
            Delivery.content_type,
            Delivery.status,
        ).where(Delivery.id == delivery_id)
    ).first()
    if row is None:
        return None
    subdomain, content_type = row.account_subdomain, row.content_type
    return Source(
        row.id, row.received_at, row.account_id, subdomain, content_type, row.status.value
    )


def _attempts(session: Session, launch_id: int) -> tuple[Attempt, ...]:
    rows = session.execute(
        select(
            ApiCall.id.label("call_id"),
            ApiCall.dispatcher,
            CallLaunch.position,
            ApiCall.launch_count,
            ApiCall.started_at,
            ApiCall.finished_at,
            ApiCall.status_code,
            ApiCall.outcome,
            ApiCall.error,
            ApiCall.response_excerpt,
        )
        .join(CallLaunch, CallLaunch.call_id == ApiCall.id)
        .where(CallLaunch.launch_id == launch_id)
        .order_by(ApiCall.started_at, ApiCall.id)
    )
    return tuple(Attempt(**row._asdict()) for row in rows)


def verdict(row: LogRow) -> str:
    """Why a launch is where it is, in one sentence built from `reason` and `last_error`."""
    match row.status:
        case LaunchStatus.PENDING:
            waiting = f"pending: due at {format_when(row.not_before)}"
            return f"{waiting} ({row.reason})" if row.reason else waiting
        case LaunchStatus.SENDING:
            return f"sending: in API call #{row.call_id}, no answer recorded yet"
        case LaunchStatus.SENT:
            finished = format_when(row.call_finished_at)
            return f"sent: amoCRM accepted API call #{row.call_id} at {finished}"
        case LaunchStatus.DRY_RUN:
            return "dry run: recorded, never sent (DRY_RUN was on or no token was set)"
        case LaunchStatus.FAILED:
            return f"failed after {row.attempts} API call(s): {row.last_error or row.reason}"
        case LaunchStatus.UNCERTAIN:
            return (
                f"{row.reason}; amoCRM may have started the bot, so it is not resent by "
                "itself (`automation launches retry` would, and may message the customer twice)"
            )
        case LaunchStatus.CANCELLED:
            return f"cancelled: {row.reason}"
        case _:
            return f"skipped, never sent: {row.reason}"


def describe_story(story: Story) -> list[str]:
    """`launches show` as text: the launch, where it came from, every call, the verdict."""
    row = story.launch
    return [
        f"launch #{row.id}: {row.status.value}",
        f"  rule:       {row.rule}",
        f"  bot:        {row.bot_id} on {row.entity}",
        f"  event:      {row.event_type} ({story.event_group}[{story.event_index}])",
        f"  change:     {story.change_key}",
        f"  created:    {format_when(row.created_at)}   not before {format_when(row.not_before)}",
        f"  settled:    {format_when(row.settled_at)}",
        f"  attempts:   {row.attempts} API call(s), {row.retries} retry(ies)",
        f"  reason:     {row.reason or '-'}",
        f"  last error: {row.last_error or '-'}",
        *_describe_source(story.source),
        *_describe_attempts(story.attempts),
        f"why: {story.verdict}",
    ]


def _describe_source(source: Source | None) -> list[str]:
    if source is None:
        return ["delivery: none (deleted, or the launch was not made from a webhook)"]
    account = source.account_subdomain or source.account_id or "unknown"
    return [
        f"delivery #{source.delivery_id}: received {format_when(source.received_at)}, "
        f"account {account}, {source.status}, {source.content_type}"
    ]


def _describe_attempts(attempts: Sequence[Attempt]) -> list[str]:
    if not attempts:
        return ["API calls: none"]
    lines = [f"API calls: {len(attempts)}"]
    for call in attempts:
        code = call.status_code if call.status_code is not None else "no status"
        started, finished = format_when(call.started_at), format_when(call.finished_at)
        lines.append(
            f"  #{call.call_id} {started} → {finished}  {code}  "
            f"{call.outcome or 'no outcome (in flight or lost)'}  "
            f"(item {call.position + 1} of {call.launch_count}, {call.dispatcher})"
        )
        if call.error:
            lines.append(f"      error: {call.error}")
        if call.response_excerpt:
            lines.append(f"      answer: {_shorten(call.response_excerpt, 300)}")
    return lines


# ------------------------------------------------------------------ retry and cancel


@dataclass(frozen=True, slots=True)
class Transition:
    """An operator's change of launch status: which statuses allow it, what it does."""

    verb: str
    done: str
    allowed: tuple[LaunchStatus, ...]
    to: LaunchStatus
    apply: Callable[[Session, Sequence[int], datetime], list[int]]


RETRY = Transition("retry", "retried", states.RETRYABLE, LaunchStatus.PENDING, outbox.retry)
CANCEL = Transition(
    "cancel", "cancelled", states.CANCELLABLE, LaunchStatus.CANCELLED, outbox.cancel
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a retry or cancel would change, and what it refuses, before it runs."""

    transition: Transition
    targets: tuple[LogRow, ...]
    refused: tuple[str, ...]

    @property
    def uncertain(self) -> int:
        """Targets whose first send may have reached amoCRM: a retry may send twice."""
        return sum(row.status is LaunchStatus.UNCERTAIN for row in self.targets)


def plan_by_ids(session: Session, transition: Transition, ids: Sequence[int]) -> Plan:
    """Launches named by id; each missing or not-allowed one is refused with a reason."""
    found = {
        row.id: row
        for row in (
            LogRow.from_row(r)
            for r in session.execute(select(launch_log).where(launch_log.c.id.in_(ids)))
        )
    }
    targets, refused = [], []
    for launch_id in dict.fromkeys(ids):
        row = found.get(launch_id)
        if row is None:
            refused.append(f"launch #{launch_id}: refused: it does not exist")
        elif row.status not in transition.allowed:
            refused.append(_refusal(transition, row))
        else:
            targets.append(row)
    return Plan(transition, tuple(targets), tuple(refused))


def _refusal(transition: Transition, row: LogRow) -> str:
    *others, last = (status.value for status in transition.allowed)
    allowed = f"{', '.join(others)} or {last}" if others else last
    return (
        f"launch #{row.id}: refused: it is {row.status.value}; "
        f"only {allowed} launches can be {transition.done}"
    )


def plan_by_status(
    session: Session,
    transition: Transition,
    statuses: Sequence[LaunchStatus],
    *,
    rule: str | None = None,
    settled_since: datetime | None = None,
) -> Plan:
    """Every launch in `statuses` (all allowed by `transition`), oldest first,
    optionally of one rule and settled (failed, became uncertain) since a moment."""
    assert set(statuses) <= set(transition.allowed), "statuses the transition refuses"
    view = launch_log.c
    statement: Select[Any] = select(launch_log).where(view.status.in_([s.value for s in statuses]))
    if rule is not None:
        statement = statement.where(view.rule == rule)
    if settled_since is not None:
        statement = statement.where(view.settled_at >= settled_since)
    rows = session.execute(statement.order_by(view.id))
    return Plan(transition, tuple(LogRow.from_row(row) for row in rows), ())


def apply_plan(session: Session, plan: Plan, now: datetime) -> tuple[list[int], list[str]]:
    """Run the plan's transition; returns the ids changed and one message per target
    that changed status since it was planned (a dispatcher claimed it, say)."""
    changed: list[int] = []
    ids = [row.id for row in plan.targets]
    for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        changed += plan.transition.apply(session, ids[start : start + 500], now)
    done = set(changed)
    missed = [
        f"launch #{row.id}: not {plan.transition.done}: it left {row.status.value} meanwhile"
        for row in plan.targets
        if row.id not in done
    ]
    return changed, missed
