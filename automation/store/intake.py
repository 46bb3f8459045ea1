"""Storing a webhook: its delivery row, the entities it names and its launches, in the
caller's transaction.

De-duplication is the database's job (a unique `dedupe_key`, `INSERT … ON CONFLICT DO
NOTHING`), never read-then-write: two copies of one webhook arriving at the same instant
on two workers still produce one launch.

This is the webhook's hot path, and on SQLite its transaction holds the database's only
write lock. So the rows are built first (`Rows.of`, pure: no database), and the
transaction only runs the INSERTs (`store`), through `CompiledInsert`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, insert, or_, select, update

from automation.events.mentions import named_entities
from automation.events.payloads import Payload
from automation.rules.chat import Chat
from automation.store import chatguard, states
from automation.store.database import dialect_insert
from automation.store.fastsql import CompiledInsert, CompiledSelect
from automation.store.models import Delivery, DeliveryEntity, Launch
from automation.store.states import DeliveryStatus, LaunchStatus
from automation.times import format_duration

if TYPE_CHECKING:
    from automation.rules.load import PlannedLaunch


@dataclass(frozen=True, slots=True)
class Inbound:
    """A webhook as received: what we store in `deliveries` before answering."""

    body: bytes
    content_type: str
    remote_addr: str | None
    received_at: datetime
    payload: Payload
    #: The stored rules version that judged it (`store.versions`).
    rules_version_id: int | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What `store` stored: the answer the webhook gives amoCRM."""

    delivery_id: int
    events: int
    launches: int
    skipped: int
    duplicates: int
    status: DeliveryStatus


@dataclass(frozen=True, slots=True)
class Rows:
    """A webhook's rows, built before the transaction that stores them."""

    delivery: dict[str, Any]
    launches: list[tuple[PlannedLaunch, dict[str, Any]]]
    #: (entity type, entity id) its events name, for `delivery_entities`.
    entities: list[tuple[str, int]]

    def planned(self) -> list[PlannedLaunch]:
        return [launch for launch, _ in self.launches]

    @classmethod
    def of(cls, inbound: Inbound, planned: Sequence[PlannedLaunch]) -> Rows:
        payload = inbound.payload
        status = DeliveryStatus.ACCEPTED if payload.recognized else DeliveryStatus.UNRECOGNIZED
        delivery = {
            "received_at": inbound.received_at,
            "remote_addr": inbound.remote_addr,
            "content_type": inbound.content_type[:200],
            "body": inbound.body,
            "account_id": payload.account.id,
            "account_subdomain": payload.account.subdomain,
            "event_count": len(payload.events),
            # Counted optimistically (every launch new): the common case needs no UPDATE.
            "launch_count": len(planned),
            "duplicate_count": 0,
            "status": status,
            "rules_version_id": inbound.rules_version_id,
        }
        version = inbound.rules_version_id
        launches = [
            (launch, launch_row(launch, inbound.received_at, version)) for launch in planned
        ]
        return cls(delivery, launches, named_entities(payload))


def store(connection: Connection, rows: Rows, *, locked: bool = False) -> Enqueued:
    """Insert a webhook's rows in the connection's transaction; the caller commits.

    A launch whose dedupe key exists already is not stored again and counts as a
    duplicate. A launch inside its rule's cooldown is stored as `skipped` with the
    reason, so "why did my bot not start?" has an answer in the log. `locked`: the
    caller took `chatguard.lock` for these launches already (a group commit locks a
    whole batch at once).
    """
    inserted = INSERT_DELIVERY.execute(connection, rows.delivery)
    assert inserted is not None, "a delivery insert has no conflict clause"
    delivery_id = int(inserted[0])
    if not locked:
        chatguard.lock(connection, rows.planned())
    INSERT_ENTITY.execute_many(
        connection,
        [{"delivery_id": delivery_id, "entity_type": k, "entity_id": i} for k, i in rows.entities],
    )
    outcomes = [_store_launch(connection, delivery_id, *launch) for launch in rows.launches]
    added = outcomes.count(LaunchStatus.PENDING)
    skipped = outcomes.count(LaunchStatus.SKIPPED)
    duplicates = outcomes.count(None)
    if added != len(outcomes):
        connection.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(launch_count=added, duplicate_count=duplicates)
        )
    delivery = rows.delivery
    events, status = delivery["event_count"], delivery["status"]
    return Enqueued(delivery_id, events, added, skipped, duplicates, status)


def enqueue_launches(
    connection: Connection,
    delivery_id: int,
    planned: Sequence[PlannedLaunch],
    now: datetime,
    rules_version_id: int | None = None,
) -> list[LaunchStatus | None]:
    """Store launches for an already stored delivery (a webhook, or a replay of one).

    Returns, per planned launch, the status it was stored with (`pending`, or
    `skipped` inside its cooldown) or None when its dedupe key existed already, so a
    replay adds only what no earlier delivery or replay added.
    """
    chatguard.lock(connection, planned)
    return [
        _store_launch(connection, delivery_id, launch, launch_row(launch, now, rules_version_id))
        for launch in planned
    ]


def launch_row(
    launch: PlannedLaunch, now: datetime, rules_version_id: int | None = None
) -> dict[str, Any]:
    """A `pending` launch row without its delivery (`_store_launch` adds it)."""
    chat = Chat.of(launch)
    return {
        "delivery_id": None,
        "rule": launch.rule,
        "event_type": launch.event.type,
        "event_group": launch.event.group[:100],
        "event_index": launch.event.index,
        "bot_id": launch.bot_id,
        "entity_type": launch.entity_type,
        "entity_id": launch.entity_id,
        "chat_lead_id": chat.lead_id,
        "chat_contact_id": chat.contact_id,
        "blocked_by": None,
        "change_key": launch.event.change[:300],
        "dedupe_key": dedupe_digest(launch),
        "status": LaunchStatus.PENDING,
        "reason": None,
        "not_before": launch.not_before,
        "attempts": 0,
        "retries": 0,
        "created_at": now,
        "updated_at": now,
        "settled_at": None,
        "rules_version_id": rules_version_id,
    }


def dedupe_digest(launch: PlannedLaunch) -> str:
    """The stored form of a launch's dedupe key: fixed length, whatever the rule name."""
    return hashlib.sha256(launch.dedupe_key.encode()).hexdigest()


def _store_launch(
    connection: Connection, delivery_id: int, launch: PlannedLaunch, row: dict[str, Any]
) -> LaunchStatus | None:
    """Insert unless the dedupe key exists; the status stored, or None if not stored.

    A launch inside its cooldown is `skipped`; otherwise one whose chat another bot
    holds is `skipped` or, with `if_busy: wait`, `pending` for later (`chatguard`).
    """
    row = {**row, "delivery_id": delivery_id}
    now = row["created_at"]
    reason = _cooldown_reason(connection, launch, now)
    if reason is not None:
        row |= {"status": LaunchStatus.SKIPPED, "reason": reason, "settled_at": now}
    elif (decision := chatguard.judge(connection, launch, now)) is not None:
        row |= chatguard.busy_row(decision, now)
    if INSERT_LAUNCH.execute(connection, row) is None:
        return None
    return LaunchStatus(row["status"])


def _cooldown_reason(connection: Connection, launch: PlannedLaunch, now: datetime) -> str | None:
    """Why the launch is skipped: the same bot ran on the same entity inside the
    rule's cooldown. None when it is not (or the rule has no cooldown).

    The check is a read, so two different changes of the same lead stored at the same
    instant by two workers could both see "no earlier launch": `chatguard.lock` holds
    the target (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE) beforehand.
    """
    if not launch.cooldown:
        return None
    values: dict[str, Any] = {"entity_id": launch.entity_id, "entity_type": launch.entity_type}
    values |= {"bot_id": launch.bot_id, "since": now - launch.cooldown}
    found = _COOLDOWN_PROBE.rows(connection, values)
    if not found:
        return None
    earlier = connection.execute(
        select(Launch.id, Launch.created_at).where(Launch.id == found[0][0])
    ).one()
    return (
        f"cooldown: launch #{earlier.id} of bot {launch.bot_id} on this entity at "
        f"{earlier.created_at:%Y-%m-%d %H:%M:%S}Z is inside the "
        f"{format_duration(launch.cooldown)} cooldown"
    )


_COOLDOWN_PROBE = CompiledSelect(
    select(Launch.id)
    .where(
        Launch.entity_id == bindparam("entity_id", None),
        Launch.entity_type == bindparam("entity_type", None),
        Launch.bot_id == bindparam("bot_id", None),
        Launch.created_at > bindparam("since", None, type_=Launch.created_at.type),
        or_(*(Launch.status == status for status in sorted(states.COOLDOWN))),
    )
    .order_by(Launch.created_at.desc())
    .limit(1)
)
"""The latest launch that puts an entity in its cooldown: a probe made for every
launch of a rule with a cooldown, nearly always answered by no row."""

INSERT_DELIVERY = CompiledInsert(lambda _dialect: insert(Delivery).returning(Delivery.id))
INSERT_ENTITY = CompiledInsert(lambda _dialect: insert(DeliveryEntity))
INSERT_LAUNCH = CompiledInsert(
    lambda dialect: (
        dialect_insert(dialect)(Launch)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(Launch.id)
    )
)
