"""The launch log as operators read it: the `launch_log` view, the filters of `launches
list` and `GET /api/launches`, and the story of a launch as text.

The records themselves come from `story` (one launch story for the CLI, the API and
the console); retry and cancel are `transitions`. Nothing here prints: the CLI echoes
the lines these functions return.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Column, ColumnElement, Integer, MetaData, String, Table, Text

from automation.store.models import UTCDateTime
from automation.store.states import LaunchStatus
from automation.times import format_when

if TYPE_CHECKING:
    from automation.store.story import CallRecord, DeliveryRecord, LaunchRecord, LaunchStory

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


# ---------------------------------------------------------------------------- as text


def format_table(rows: Sequence[LaunchRecord], zone: tzinfo = UTC) -> list[str]:
    """A readable table, one line per launch, columns padded to their widest cell; times
    in `zone`, and when a pending launch is due (the operator's "why has it not gone?")."""
    header = ("ID", "STATUS", "RULE", "BOT", "ENTITY", "CREATED", "DUE", "ATTEMPTS", "REASON")
    cells = [header] + [
        (
            str(row.id),
            row.status.value,
            row.rule,
            str(row.bot_id),
            row.target,
            format_when(row.created_at, zone),
            format_when(row.not_before, zone) if row.status is LaunchStatus.PENDING else "",
            str(row.attempts),
            _shorten(row.reason or ""),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]


def count_footer(shown: int, total: int, cap: int) -> str:
    """`50 of 611 launches, newest first; --limit shows more` under a cut list."""
    if total <= shown:
        return ""
    of = f"more than {cap:,}" if total > cap else f"{total:,}"
    return f"{shown:,} of {of} launches, newest first; --limit shows more"


def _shorten(text: str, width: int = REASON_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def describe_story(story: LaunchStory, zone: tzinfo = UTC, max_attempts: int = 8) -> list[str]:
    """`launches show` as text: the launch, where it came from, every call, the verdict.

    `max_attempts` is AMOCRM_MAX_ATTEMPTS: the retry budget is shown against it.
    """
    row = story.launch
    return [
        f"launch #{row.id}: {row.status.value}",
        f"  rule:       {row.rule}",
        f"  bot:        {row.bot_id} on {row.target}",
        f"  event:      {row.event_type} ({row.event_group}[{row.event_index}])",
        f"  change:     {row.change_key}",
        f"  created:    {format_when(row.created_at, zone)}   "
        f"not before {format_when(row.not_before, zone)}",
        f"  settled:    {format_when(row.settled_at, zone)}",
        f"  attempts:   {_describe_budget(row, zone, max_attempts)}",
        f"  reason:     {row.reason or '-'}",
        f"  last error: {row.last_error or '-'}",
        *_describe_delivery(story.delivery, zone),
        *_describe_calls(story.calls, zone),
        f"why: {story.verdict}",
    ]


def _describe_budget(row: LaunchRecord, zone: tzinfo, max_attempts: int) -> str:
    """Where the launch stands in its retry budget (429s and bisects use none of it)."""
    made = f"{row.attempts} API call(s)"
    if row.status is LaunchStatus.PENDING:
        due = format_when(row.not_before, zone)
        return f"{made}; next: attempt {row.retries + 1} of {max_attempts}, due {due}"
    return f"{made}; attempt {row.retries + 1} of {max_attempts}"


def _describe_delivery(delivery: DeliveryRecord | None, zone: tzinfo) -> list[str]:
    if delivery is None:
        return ["delivery: none (deleted, or the launch was not made from a webhook)"]
    account = delivery.account_subdomain or delivery.account_id or "unknown"
    return [
        f"delivery #{delivery.id}: received {format_when(delivery.received_at, zone)}, "
        f"account {account}, {delivery.status.value}, {delivery.content_type}"
    ]


def _describe_calls(calls: Sequence[CallRecord], zone: tzinfo) -> list[str]:
    if not calls:
        return ["API calls: none"]
    lines = [f"API calls: {len(calls)}"]
    for call in calls:
        code = call.status_code if call.status_code is not None else "no status"
        started, finished = format_when(call.started_at, zone), format_when(call.finished_at, zone)
        lines.append(
            f"  #{call.id} {started} → {finished}  {code}  "
            f"{call.outcome or 'no outcome (in flight or lost)'}  "
            f"(item {call.position + 1} of {call.launch_count}, {call.dispatcher})"
        )
        if call.error:
            lines.append(f"      error: {call.error}")
        if call.response_excerpt:
            lines.append(f"      answer: {_shorten(call.response_excerpt, 300)}")
    return lines
