"""The one-bot-per-chat guard in the database: lock the chat, then see who holds it.

The rule itself (what "the same chat" and "busy" mean) is pure, in `rules/chat.py`.
Here it is enforced the way the cooldown is, never by a bare read-then-write: before a
webhook's launches are judged, every entity they touch is locked until the transaction
ends, so of eight webhooks about one chat stored at the same instant by eight workers
(or hosts), each judges only after the one before has committed, and sees its launch.

- PostgreSQL: a transaction-scoped advisory lock per entity, taken in one sorted
  order, so two webhooks locking overlapping chats cannot deadlock each other.
- SQLite: every write transaction starts with BEGIN IMMEDIATE, so one writer at a time
  holds the database already.

Several webhooks committed in one transaction, each in its own SAVEPOINT, run one
after the other on one connection: a later one sees the earlier ones' launches, and a
savepoint rolled back takes its launches (and nothing a later one relied on) with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, bindparam, or_, select, text, update
from sqlalchemy.orm import aliased

from automation.events.payloads import ENTITY_TYPE_CODES
from automation.rules.chat import HOLDING, RAN, Busy, Chat, Occupant, busy
from automation.store.fastsql import CompiledSelect
from automation.store.models import Launch
from automation.store.states import LaunchStatus

if TYPE_CHECKING:
    from automation.rules.load import PlannedLaunch

#: How many holders of one chat the guard reads: past a few, more change nothing.
MAX_HOLDERS = 50

_LEAD, _CONTACT = ENTITY_TYPE_CODES["lead"], ENTITY_TYPE_CODES["contact"]
#: Every key in one round trip, in the array's (sorted) order: PostgreSQL evaluates a
#: volatile function of the target list after the ORDER BY.
_LOCK = text(
    "SELECT pg_advisory_xact_lock(key) "
    "FROM unnest(CAST(:keys AS BIGINT[])) WITH ORDINALITY AS held(key, place) ORDER BY place"
)


def lock(connection: Connection, launches: Iterable[PlannedLaunch]) -> None:
    """Hold every chat (and cooldown target) of `launches` until the transaction ends.

    Every launch locks its chat, even one whose rule has the guard off: a launch that
    does check must wait until such a launch is committed, or it would not see it.
    """
    if connection.dialect.name != "postgresql":
        return
    names: set[str] = set()
    for launch in launches:
        names.update(f"chat:{name}" for name in Chat.of(launch).lock_names())
        if launch.cooldown:
            names.add(f"cooldown:{launch.bot_id}:{launch.entity_type}:{launch.entity_id}")
    if names:
        # One sorted order for every transaction: two never wait for each other's keys.
        connection.execute(_LOCK, {"keys": sorted(_key(name) for name in names)})


def _key(name: str) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def judge(connection: Connection, launch: PlannedLaunch, now: datetime) -> Busy | None:
    """The guard's decision on one launch about to be stored (call `lock` first)."""
    window = launch.one_bot_per_chat
    if not window:
        return None
    chat = Chat.of(launch)
    return busy(launch, chat, holders(connection, chat, launch.bot_id, now, window), now)


def busy_row(decision: Busy, now: datetime) -> dict[str, Any]:
    """The columns a busy launch is stored with: `skipped`, or `pending` for later."""
    changes: dict[str, Any] = {"reason": decision.reason, "blocked_by": decision.blocker.id}
    if decision.action == "skip":
        return changes | {"status": LaunchStatus.SKIPPED, "settled_at": now}
    return changes | {"not_before": decision.not_before}


def holders(
    connection: Connection, chat: Chat, bot_id: int, now: datetime, window: timedelta
) -> list[Occupant]:
    """Other bots' launches on `chat` that are due, running, or ran within `window`.

    Launches stored before the chat columns existed are found by their own entity. A
    webhook asks this for every launch it stores and the answer is nearly always "none",
    so a probe compiled once finds the ids on the driver's cursor and only a hit pays
    for a typed query.
    """
    probe: dict[str, Any] = {"entity_type": chat.entity_type, "entity_id": chat.entity_id}
    probe |= {
        "bot_id": bot_id,
        "lead_id": chat.lead_id,
        "contact_id": chat.contact_id,
        "since": now - window,
    }
    ids = [row[0] for row in _PROBE.rows(connection, probe)]
    if not ids:
        return []
    rows = connection.execute(
        select(*_COLUMNS).where(Launch.id.in_(ids)).order_by(Launch.id.desc())
    )
    return [_occupant(row, now) for row in rows]


def _holders_probe() -> CompiledSelect:
    """The ids of `holders`: one statement for every chat, since a NULL lead or
    contact id matches nothing."""
    lead = bindparam("lead_id", None, type_=Launch.chat_lead_id.type)
    contact = bindparam("contact_id", None, type_=Launch.chat_contact_id.type)
    near = or_(
        _on(bindparam("entity_type", None), bindparam("entity_id", None)),
        Launch.chat_lead_id == lead,
        _on(_LEAD, lead),
        Launch.chat_contact_id == contact,
        _on(_CONTACT, contact),
    )
    live = or_(
        *(Launch.status == status for status in sorted(HOLDING)),
        and_(
            or_(*(Launch.status == status for status in sorted(RAN))),
            Launch.settled_at > bindparam("since", None, type_=Launch.settled_at.type),
        ),
    )
    return CompiledSelect(
        select(Launch.id)
        .where(near, live, Launch.bot_id != bindparam("bot_id", None))
        .order_by(Launch.id.desc())
        .limit(MAX_HOLDERS)
    )


_COLUMNS = (
    Launch.id,
    Launch.rule,
    Launch.bot_id,
    Launch.status,
    Launch.not_before,
    Launch.sending_at,
    Launch.settled_at,
    Launch.entity_type,
    Launch.entity_id,
    Launch.chat_lead_id,
    Launch.chat_contact_id,
)


def _on(entity_type: Any, entity_id: Any) -> Any:
    return and_(Launch.entity_id == entity_id, Launch.entity_type == entity_type)


_PROBE = _holders_probe()


def _occupant(row: Any, now: datetime) -> Occupant:
    status = LaunchStatus(row.status)
    if status == LaunchStatus.PENDING:
        started = row.not_before
    elif status == LaunchStatus.SENDING:
        started = row.sending_at or now
    else:
        started = row.settled_at
    return Occupant(row.id, row.rule, row.bot_id, status.value, started, _row_chat(row))


# ------------------------------------------------------------ the dispatcher's side


def still_waiting() -> Any:
    """A launch whose blocker has yet to be sent: not due, whatever its `not_before`
    says (the blocker was delayed by retries or a paused account). Spelled without
    `IN (…)`: the claim runs compiled once (`fastsql`), where a list has no place."""
    blocker = aliased(Launch)
    return (
        select(blocker.id)
        .where(
            blocker.id == Launch.blocked_by,
            or_(*(blocker.status == status for status in sorted(HOLDING))),
        )
        .correlate(Launch)
        .exists()
    )


def one_per_chat(rows: Iterable[Any]) -> list[Any]:
    """Due launches, oldest first, without a second one on a chat already taken.

    Rows carry `entity_type`, `entity_id`, `chat_lead_id` and `chat_contact_id`. The
    ones left out stay `pending` and go in a later request.
    """
    taken: set[str] = set()
    kept = []
    for row in rows:
        names = _row_chat(row).lock_names()
        if taken.isdisjoint(names):
            taken.update(names)
            kept.append(row)
    return kept


def _row_chat(row: Any) -> Chat:
    """A stored launch's chat; launches stored before the chat columns have their own
    entity only."""
    lead = row.chat_lead_id or (row.entity_id if row.entity_type == _LEAD else None)
    contact = row.chat_contact_id or (row.entity_id if row.entity_type == _CONTACT else None)
    return Chat(row.entity_type, row.entity_id, lead, contact)


def release_waiters(connection: Connection, ids: Sequence[int], now: datetime) -> int:
    """`wait` launches whose blocker (one of `ids`) failed or was cancelled: due now.

    The chat they waited for never got its bot, so they need not wait out its window.
    Returns how many were released.
    """
    if not ids:
        return 0
    result = connection.execute(
        _RELEASE,
        {"ids": list(ids), "now_": now, "why": "released: the launch it waited for did not run"},
    )
    return int(result.rowcount or 0)


_RELEASE = (
    update(Launch)
    .where(
        Launch.blocked_by.in_(bindparam("ids", expanding=True)),
        Launch.status == LaunchStatus.PENDING,
        Launch.not_before > bindparam("now_"),
    )
    .values(not_before=bindparam("now_"), updated_at=bindparam("now_"), reason=bindparam("why"))
)
