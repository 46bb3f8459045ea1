"""Large webhooks: stored raw and answered at once, expanded into launches after.

A body of tens of thousands of events takes seconds to decode and store, longer than
amoCRM waits, and on SQLite its transaction would hold the only write lock meanwhile.
So the webhook stores such a body as it came (`queue_delivery`: a `queued` delivery and
its `delivery_queue` row, in one commit before the 200), and a dispatcher's expander
(`dispatch.expander`) stores its launches right after, a chunk per short transaction.

Exactly once: the expander holds the row by a claim token, as a dispatcher holds a
launch; every chunk moves the row's progress forward in the transaction that stores
the chunk's rows, and only if the token and the progress are still what this expander
read (`store_chunk`). A second expander, or one that stalled and lost its claim, stores
nothing; a crash loses only the chunk in flight, which the next claim stores again
from the recorded progress. The launches' dedupe keys hold under all of it anyway.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Connection, insert, or_, select, update
from sqlalchemy.orm import Session

from automation.errors import ClaimLost
from automation.store import intake
from automation.store.database import for_update, rowcount
from automation.store.intake import INSERT_DELIVERY, INSERT_ENTITY
from automation.store.models import Delivery, QueuedDelivery
from automation.store.states import DeliveryStatus, LaunchStatus

if TYPE_CHECKING:
    from automation.rules.load import PlannedLaunch


@dataclass(frozen=True, slots=True)
class RawDelivery:
    """A large webhook as received, before anything decoded it."""

    body: bytes
    content_type: str
    remote_addr: str | None
    received_at: datetime
    #: What a glance at the body found (`events.glance`), checked again on expansion.
    account_id: int | None
    account_subdomain: str | None
    #: The rules version in force when it arrived: the one that expands it.
    rules_version_id: int | None


def queue_delivery(connection: Connection, raw: RawDelivery) -> int:
    """Store `raw` as a `queued` delivery with its queue row; the caller commits, and
    only then answers 200. Returns the delivery's id."""
    inserted = INSERT_DELIVERY.execute(
        connection,
        {
            "received_at": raw.received_at,
            "remote_addr": raw.remote_addr,
            "content_type": raw.content_type[:200],
            "body": raw.body,
            "account_id": raw.account_id,
            "account_subdomain": raw.account_subdomain,
            "event_count": 0,
            "launch_count": 0,
            "duplicate_count": 0,
            "status": DeliveryStatus.QUEUED,
            "rules_version_id": raw.rules_version_id,
        },
    )
    assert inserted is not None, "a delivery insert has no conflict clause"
    delivery_id = int(inserted[0])
    connection.execute(
        insert(QueuedDelivery).values(
            delivery_id=delivery_id,
            queued_at=raw.received_at,
            claims=0,
            launches_done=0,
            entities_done=0,
        )
    )
    return delivery_id


@dataclass(frozen=True, slots=True)
class Claim:
    """A queued delivery an expander holds: its body and where its expansion stands."""

    delivery_id: int
    token: str
    body: bytes
    content_type: str
    received_at: datetime
    account_id: int | None
    account_subdomain: str | None
    rules_version_id: int | None
    launches_done: int
    entities_done: int


def claim_next(session: Session, owner: str, now: datetime, stale_after: timedelta) -> Claim | None:
    """Take the oldest unfinished queued delivery nobody holds, or whose holder has not
    stored a chunk for `stale_after` (it died or stalled). The caller commits.

    The take is a compare-and-set on the token read, so two expanders racing for one
    row cannot both win; on PostgreSQL, rows another transaction is taking are skipped.
    """
    waiting = (
        select(QueuedDelivery)
        .where(
            QueuedDelivery.finished_at.is_(None),
            or_(
                QueuedDelivery.claim_token.is_(None),
                QueuedDelivery.claimed_at < now - stale_after,
            ),
        )
        .order_by(QueuedDelivery.finished_at, QueuedDelivery.queued_at)
        .limit(1)
    )
    row = session.scalars(for_update(session, waiting, skip_locked=True)).one_or_none()
    if row is None:
        return None
    delivery_id, seen = row.delivery_id, row.claim_token
    token = uuid.uuid4().hex
    taken = session.execute(
        update(QueuedDelivery)
        .where(
            QueuedDelivery.delivery_id == delivery_id,
            _token_is(seen),
            QueuedDelivery.finished_at.is_(None),
        )
        .values(
            claim_token=token,
            claimed_by=owner[:100],
            claimed_at=now,
            claims=QueuedDelivery.claims + 1,
        )
    )
    if rowcount(taken) != 1:
        return None
    return _claim(session, delivery_id, token)


def _token_is(token: str | None) -> ColumnElement[bool]:
    column = QueuedDelivery.claim_token
    return column.is_(None) if token is None else column == token


def _claim(session: Session, delivery_id: int, token: str) -> Claim:
    row = session.execute(
        select(
            Delivery.body,
            Delivery.content_type,
            Delivery.received_at,
            Delivery.account_id,
            Delivery.account_subdomain,
            Delivery.rules_version_id,
            QueuedDelivery.launches_done,
            QueuedDelivery.entities_done,
        )
        .join(QueuedDelivery, QueuedDelivery.delivery_id == Delivery.id)
        .where(Delivery.id == delivery_id)
    ).one()
    return Claim(
        delivery_id,
        token,
        bytes(row.body),
        row.content_type,
        row.received_at,
        row.account_id,
        row.account_subdomain,
        row.rules_version_id,
        row.launches_done,
        row.entities_done,
    )


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an expansion stands after a chunk: the counts the next chunk starts from."""

    launches_done: int
    entities_done: int


def store_chunk(
    connection: Connection,
    claim: Claim,
    at: Progress,
    entities: Sequence[tuple[str, int]],
    planned: Sequence[PlannedLaunch],
    totals: tuple[int, int],
    now: datetime,
) -> Progress:
    """Store the next `entities` and `planned` launches of a claimed delivery, starting
    at `at`, in the caller's transaction, and move its progress past them.

    Launches go through `intake.enqueue_launches`, as a replay's do (dedupe, cooldown,
    one bot per chat), as of the delivery's arrival. `totals` is (events, planned
    launches) of the whole body, recorded on the delivery and the queue row. Raises
    `ClaimLost` (store nothing, roll back) when the claim or the progress moved on.
    """
    after = Progress(at.launches_done + len(planned), at.entities_done + len(entities))
    _advance(connection, claim, at, now, after, planned=totals[1])
    INSERT_ENTITY.execute_many(
        connection,
        [{"delivery_id": claim.delivery_id, "entity_type": k, "entity_id": i} for k, i in entities],
    )
    outcomes = intake.enqueue_launches(
        connection, claim.delivery_id, planned, claim.received_at, claim.rules_version_id
    )
    connection.execute(
        update(Delivery)
        .where(Delivery.id == claim.delivery_id)
        .values(
            event_count=totals[0],
            launch_count=Delivery.launch_count + outcomes.count(LaunchStatus.PENDING),
            duplicate_count=Delivery.duplicate_count + outcomes.count(None),
        )
    )
    return after


def finish(
    connection: Connection,
    claim: Claim,
    at: Progress,
    status: DeliveryStatus,
    now: datetime,
    error: str | None = None,
    totals: tuple[int, int] | None = None,
) -> None:
    """End a claimed expansion: the delivery takes `status` (`accepted`,
    `unrecognized` or `rejected` with `error`) and `totals`, (events, planned
    launches) of the whole body when it decoded: written here whatever the chunks
    stored, since a body whose events name no entity and plan no launch stores none.
    Raises `ClaimLost` like `store_chunk`."""
    planned = None if totals is None else totals[1]
    _advance(connection, claim, at, now, at, planned=planned, finished=True, error=error)
    values: dict[str, object] = {"status": status}
    if totals is not None:
        values["event_count"] = totals[0]
    connection.execute(update(Delivery).where(Delivery.id == claim.delivery_id).values(values))


def release(connection: Connection, claim: Claim) -> None:
    """Let go of a claim unfinished (the dispatcher is stopping): the next expander
    takes it at once instead of after DISPATCHER_DEAD_AFTER."""
    connection.execute(
        update(QueuedDelivery)
        .where(
            QueuedDelivery.delivery_id == claim.delivery_id,
            QueuedDelivery.claim_token == claim.token,
        )
        .values(claim_token=None, claimed_by=None)
    )


def _advance(
    connection: Connection,
    claim: Claim,
    at: Progress,
    now: datetime,
    after: Progress,
    *,
    planned: int | None = None,
    finished: bool = False,
    error: str | None = None,
) -> None:
    """The fence: move the row from `at` to `after` only if this claim still holds it
    there (its first statement: on SQLite the transaction takes the lock here)."""
    values: dict[str, object] = {
        "launches_done": after.launches_done,
        "entities_done": after.entities_done,
        "claimed_at": now,
    }
    if planned is not None:
        values["planned"] = planned
    if finished:
        values |= {"finished_at": now, "error": error, "claim_token": None}
    moved = connection.execute(
        update(QueuedDelivery)
        .where(
            QueuedDelivery.delivery_id == claim.delivery_id,
            QueuedDelivery.claim_token == claim.token,
            QueuedDelivery.launches_done == at.launches_done,
            QueuedDelivery.entities_done == at.entities_done,
            QueuedDelivery.finished_at.is_(None),
        )
        .values(values)
    )
    if rowcount(moved) != 1:
        raise ClaimLost(
            f"queued delivery #{claim.delivery_id} is no longer this expander's to expand: "
            "another dispatcher took it over"
        )
