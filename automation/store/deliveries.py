"""Finding stored webhooks: by the entities they name, status and time, newest first.

`deliveries list` and `GET /api/deliveries` read the same rows through
`list_deliveries`, and so does the console's `/ui/deliveries`; the rows are pydantic
models so the API publishes their schema and the CLI prints the same JSON. Nothing
here prints or writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, func, select, tuple_
from sqlalchemy.orm import Session, defer

from automation.store.models import Delivery, DeliveryEntity, QueuedDelivery
from automation.store.states import DeliveryStatus


class Shape(BaseModel):
    """A shape the CLI prints and the API answers: strict and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EntityRef(Shape):
    """An entity a webhook names: `lead`, `contact`, `company`, `customer` or
    `chat_contact` (the contact a chat or message is with)."""

    type: str
    id: int


class Expansion(Shape):
    """How far a large webhook stored raw (`queued`) got in being expanded into its
    launches by a dispatcher (`store.queue`)."""

    queued_at: datetime
    #: The dispatcher expanding it (None: waiting for one, or finished).
    claimed_by: str | None
    #: Times a dispatcher took it: more than one means one died or let go mid-way.
    claims: int
    #: Launches its events plan (None until a dispatcher decoded it), and those stored.
    planned: int | None
    launches_done: int
    finished_at: datetime | None
    #: Why it ended `rejected`.
    error: str | None

    def describe(self) -> str:
        """`expanding: 1200 of 30000 launches planned (claimed by …)` and the like."""
        if self.error is not None:
            return f"rejected at {_at(self.finished_at)}: {self.error}"
        total = "?" if self.planned is None else str(self.planned)
        done = f"{self.launches_done} of {total} launches planned"
        if self.finished_at is not None:
            return f"expanded at {_at(self.finished_at)}: {done}"
        if self.claims == 0:
            return f"queued, not started: waiting for a dispatcher (since {_at(self.queued_at)})"
        holder = f"claimed by {self.claimed_by}" if self.claimed_by else "waiting for a dispatcher"
        return f"queued at {_at(self.queued_at)}, expanding: {done} ({holder})"


def _at(moment: datetime | None) -> str:
    return "?" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}Z"


class DeliveryRow(Shape):
    """One stored webhook, without its body."""

    id: int
    received_at: datetime
    status: DeliveryStatus
    #: Events in the body, and launches it added (duplicates of earlier ones apart).
    events: int
    launches: int
    duplicates: int
    account_id: int | None
    #: The rules version that judged it; None if stored before versions were recorded.
    rules_version_id: int | None
    #: The first ENTITIES_SHOWN entities it names; `more_entities` counts the rest.
    entities: list[EntityRef]
    more_entities: int = 0
    #: A large webhook stored raw: how its expansion into launches went (None for
    #: every other webhook).
    expansion: Expansion | None = None


class DeliveryPage(Shape):
    """A page of deliveries, newest first; `next_cursor` is None on the last page."""

    deliveries: list[DeliveryRow]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DeliveryQuery:
    """Filters of `deliveries list` and `GET /api/deliveries`; empty ones do not filter."""

    entity_id: int | None = None
    statuses: tuple[DeliveryStatus, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    #: Only deliveries listed after this one (a page's `next_cursor`): the next page.
    before_id: int | None = None


def list_deliveries(session: Session, query: DeliveryQuery) -> DeliveryPage:
    """A page of deliveries matching `query`, newest first: by time received, then id
    (ids follow arrival but for webhooks committed in another order). Keyset-paged:
    `next_cursor` is the id of the page's last delivery, the next page what lies below
    it in that order.

    The order is `ix_deliveries_received_at`'s, so a page walks the index and stops
    after `limit` rows, however deep the time window or the page; bodies stay unread.
    """
    newest = (Delivery.received_at.desc(), Delivery.id.desc())
    statement = (
        select(Delivery)
        .options(defer(Delivery.body))
        .where(*_filters(query))
        .order_by(*newest)
        .limit(query.limit + 1)
    )
    found = list(session.scalars(statement))
    page, more = found[: query.limit], len(found) > query.limit
    ids = [delivery.id for delivery in page]
    entities, expansions = entities_of(session, ids), expansions_of(session, ids)
    rows = [_row(d, entities.get(d.id), expansions.get(d.id)) for d in page]
    return DeliveryPage(deliveries=rows, next_cursor=str(page[-1].id) if more else None)


def _filters(query: DeliveryQuery) -> Iterator[ColumnElement[bool]]:
    if query.entity_id is not None:
        named = select(DeliveryEntity.delivery_id).where(
            DeliveryEntity.entity_id == query.entity_id
        )
        yield Delivery.id.in_(named)
    if len(query.statuses) == 1:  # `=`, which SQLite matches to ix_deliveries_unrecognized
        yield Delivery.status == query.statuses[0]
    elif query.statuses:
        yield Delivery.status.in_(query.statuses)
    if query.since is not None:
        yield Delivery.received_at >= query.since
    if query.until is not None:
        yield Delivery.received_at < query.until
    if query.before_id is not None:
        yield _below(query.before_id)


def _below(before_id: int) -> ColumnElement[bool]:
    """Deliveries after delivery `before_id` in the list's order. The cursor's own row
    gives the time to continue below; if it was pruned meanwhile, the row with the next
    lower id does (no row at all: nothing is below)."""
    anchor = (
        select(Delivery.received_at)
        .where(Delivery.id <= before_id)
        .order_by(Delivery.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return tuple_(Delivery.received_at, Delivery.id) < tuple_(anchor, before_id)


#: Entities listed per delivery: a large webhook names tens of thousands.
ENTITIES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Named:
    """The first entities a delivery names, and how many more there are."""

    shown: list[EntityRef]
    more: int


def entities_of(
    session: Session, ids: Sequence[int], shown: int = ENTITIES_SHOWN
) -> dict[int, Named]:
    """The first `shown` entities each of these deliveries names, in a stable order,
    and the count of the others: one statement, numbered per delivery by a window."""
    if not ids:
        return {}
    e = DeliveryEntity
    place = func.row_number().over(
        partition_by=e.delivery_id, order_by=(e.entity_type, e.entity_id)
    )
    total = func.count().over(partition_by=e.delivery_id)
    numbered = (
        select(e.delivery_id, e.entity_type, e.entity_id, place.label("place"), total.label("n"))
        .where(e.delivery_id.in_(ids))
        .subquery()
    )
    rows = session.execute(
        select(numbered.c.delivery_id, numbered.c.entity_type, numbered.c.entity_id, numbered.c.n)
        .where(numbered.c.place <= shown)
        .order_by(numbered.c.delivery_id, numbered.c.place)
    )
    found: dict[int, Named] = {}
    for delivery_id, kind, entity_id, count in rows:
        named = found.setdefault(delivery_id, Named([], int(count) - shown))
        named.shown.append(EntityRef(type=kind, id=entity_id))
    return {key: Named(n.shown, max(0, n.more)) for key, n in found.items()}


def expansions_of(session: Session, ids: Sequence[int]) -> dict[int, Expansion]:
    """The expansions of those of these deliveries that were stored raw."""
    if not ids:
        return {}
    rows = session.scalars(select(QueuedDelivery).where(QueuedDelivery.delivery_id.in_(ids)))
    return {
        row.delivery_id: Expansion(
            queued_at=row.queued_at,
            claimed_by=row.claimed_by if row.claim_token is not None else None,
            claims=row.claims,
            planned=row.planned,
            launches_done=row.launches_done,
            finished_at=row.finished_at,
            error=row.error,
        )
        for row in rows
    }


@dataclass(frozen=True, slots=True)
class RawBody:
    """A delivery's body as amoCRM posted it, and what came with it: the console
    shows it folded beside the explanation (which leaves the bytes out)."""

    body: bytes
    content_type: str
    account_subdomain: str | None


def raw_body(session: Session, delivery_id: int) -> RawBody | None:
    """The stored body of `delivery_id`, or None when it is not stored. Read through
    the session's identity map: after `explain_delivery` in the same session it costs
    no second query."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        return None
    return RawBody(bytes(delivery.body), delivery.content_type, delivery.account_subdomain)


def _row(
    delivery: Delivery, entities: Named | None, expansion: Expansion | None = None
) -> DeliveryRow:
    return DeliveryRow(
        id=delivery.id,
        received_at=delivery.received_at,
        status=delivery.status,
        events=delivery.event_count,
        launches=delivery.launch_count,
        duplicates=delivery.duplicate_count,
        account_id=delivery.account_id,
        rules_version_id=delivery.rules_version_id,
        entities=entities.shown if entities else [],
        more_entities=entities.more if entities else 0,
        expansion=expansion,
    )


def format_deliveries(rows: Sequence[DeliveryRow], shown: int = 3) -> list[str]:
    """A table, one line per delivery, times in UTC; entities beyond `shown` counted."""
    header = ("id", "received (UTC)", "status", "events", "launches", "rules", "entities")
    lines = [header]
    for row in rows:
        names = [f"{entity.type} {entity.id}" for entity in row.entities]
        hidden = len(names) - shown + row.more_entities
        more = f" +{hidden}" if hidden > 0 else ""
        lines.append(
            (
                str(row.id),
                f"{row.received_at:%Y-%m-%d %H:%M:%S}",
                _status(row),
                str(row.events),
                str(row.launches),
                "-" if row.rules_version_id is None else f"#{row.rules_version_id}",
                ", ".join(names[:shown]) + more or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def _status(row: DeliveryRow) -> str:
    """The status, and a queued webhook's progress: `queued 1200/30000`."""
    found = row.expansion
    if row.status is not DeliveryStatus.QUEUED or found is None:
        return row.status.value
    total = "?" if found.planned is None else str(found.planned)
    return f"{row.status.value} {found.launches_done}/{total}"
