"""The database schema as SQLAlchemy 2 typed models.

`deliveries` is the inbox (every webhook body we acknowledged), `launches` is the
outbox and the launch log. The schema changes only through Alembic revisions in
`migrations/`; a test checks that these models and the migrations agree.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from automation.limits import RULE_NAME_LENGTH, SUBDOMAIN_LENGTH
from automation.store.states import DeliveryStatus, LaunchStatus

#: Stable constraint names on SQLite and PostgreSQL alike, so migrations can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: An auto-incrementing 64-bit key; SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC, returned timezone-aware.

    SQLite has no time zones; storing naive UTC everywhere makes both databases
    compare and sort the same way.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given: pass timezone-aware UTC times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite computed expressions come back as text
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def _enum(cls: type[enum.Enum]) -> SAEnum:
    return SAEnum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        LaunchStatus: _enum(LaunchStatus),
        DeliveryStatus: _enum(DeliveryStatus),
    }


class Delivery(Base):
    """One webhook body as amoCRM posted it, stored before we answered."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # The rare unrecognized webhooks, newest first, without walking every accepted
        # one (`deliveries list --status unrecognized` when there are none). Partial:
        # an accepted webhook, nearly all of them, adds no entry.
        Index(
            "ix_deliveries_unrecognized",
            "received_at",
            sqlite_where=text("status = 'unrecognized'"),
            postgresql_where=text("status = 'unrecognized'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(200))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    account_subdomain: Mapped[str | None] = mapped_column(String(SUBDOMAIN_LENGTH))
    event_count: Mapped[int] = mapped_column(Integer)
    launch_count: Mapped[int] = mapped_column(Integer)
    #: Launches this delivery tried to add that already existed (amoCRM retries,
    #: the same move sent as both `leads[update]` and `leads[status]`).
    duplicate_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[DeliveryStatus]
    #: The `rules_versions` row that judged it; NULL for deliveries stored before
    #: versions were recorded. No foreign key: a pruned version must not erase the
    #: fact that this delivery was judged by it (`deliveries show` says it is gone).
    rules_version_id: Mapped[int | None] = mapped_column(BigInteger, index=True)


class DeliveryEntity(Base):
    """An entity a delivery's events name: how `deliveries list --entity-id` finds it.

    Stored in the delivery's transaction; `entity_type` is `lead`, `contact`,
    `company`, `customer` or `chat_contact` (the contact a chat or message is with).
    """

    __tablename__ = "delivery_entities"
    __table_args__ = (Index("ix_delivery_entities_entity", "entity_id", "delivery_id"),)

    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    entity_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    entity_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class RulesVersion(Base):
    """One distinct content of the rules file, stored once when a server loads it.

    Deliveries and launches point at the version that judged them, so "why did no
    bot start?" is answered with the rules of that moment, not today's file.
    """

    __tablename__ = "rules_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: sha256 of the text: two servers loading the same file share one row.
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    #: The file it was read from, as the first server to load it named it.
    path: Mapped[str] = mapped_column(String(1000))
    first_loaded_at: Mapped[datetime]


class Launch(Base):
    """One bot to start on one entity: the outbox row and its launch-log entry."""

    __tablename__ = "launches"
    __table_args__ = (
        # The dispatcher's claim: due pending launches, oldest first.
        Index("ix_launches_due", "status", "not_before", "id"),
        # Cooldown look-ups and "what ran on this lead?".
        Index("ix_launches_target", "entity_id", "entity_type", "bot_id", "created_at"),
        Index("ix_launches_rule_created", "rule", "created_at"),
        # The console: a status tab newest first, and each tab's capped count; rule and
        # bot ride along so that counting a status of one rule or bot reads only this.
        Index("ix_launches_status_created", "status", "created_at", "rule", "bot_id"),
        Index("ix_launches_bot_created", "bot_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    rule: Mapped[str] = mapped_column(String(RULE_NAME_LENGTH))
    event_type: Mapped[str] = mapped_column(String(64))
    event_group: Mapped[str] = mapped_column(String(100))
    event_index: Mapped[int] = mapped_column(Integer)
    bot_id: Mapped[int] = mapped_column(BigInteger)
    entity_type: Mapped[int] = mapped_column(SmallInteger)
    entity_id: Mapped[int] = mapped_column(BigInteger)
    #: What changed in amoCRM (`lead:27754599@1727700894:s59936202`).
    change_key: Mapped[str] = mapped_column(String(300))
    #: The chat this launch occupies (rules/chat.py): the lead and the contact its
    #: event named together (talks, messages, unsorted), or just its own entity.
    chat_lead_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    chat_contact_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    #: The launch this one yielded to (`skipped`) or waits for (`pending`) because
    #: that bot held the chat. No foreign key: retention may prune the other first,
    #: and the id stays as history.
    blocked_by: Mapped[int | None] = mapped_column(BigInteger)
    #: sha256 of (rule, bot, entity, change): one launch per change, enforced here.
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[LaunchStatus]
    #: Why the launch is in its status (`cooldown`, amoCRM's message, …).
    reason: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime]
    #: API calls this launch rode in (bisecting a rejected batch adds calls too).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Times it went back to `pending` after a retryable failure: the retry budget.
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    sending_at: Mapped[datetime | None]
    settled_at: Mapped[datetime | None]
    #: The dispatcher holding it while `sending`, so a dead one's claims can be recovered.
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    #: Fresh for every claim: a dispatcher acts on a launch only while it still holds
    #: this token, so a claim that was recovered and taken by another is fenced off.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    #: The API call it is in while `sending`, then the call that settled it.
    call_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_calls.id", ondelete="SET NULL"), index=True
    )
    #: The `rules_versions` row whose rules planned it (a webhook's, or a replay's).
    rules_version_id: Mapped[int | None] = mapped_column(BigInteger, index=True)


class ApiCall(Base):
    """One request to amoCRM, committed before it goes out: the launch log's evidence."""

    __tablename__ = "api_calls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dispatcher: Mapped[str] = mapped_column(String(100))
    endpoint: Mapped[str] = mapped_column(String(100))
    launch_count: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(index=True)
    #: NULL while in flight; still NULL after a crash means "outcome unknown".
    finished_at: Mapped[datetime | None]
    status_code: Mapped[int | None] = mapped_column(Integer)
    #: How the answer was classified (`accepted`, `rate_limited`, `uncertain`, …).
    outcome: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    #: The first 2,000 characters of amoCRM's answer.
    response_excerpt: Mapped[str | None] = mapped_column(Text)


class CallLaunch(Base):
    """Which launches rode in which call: every attempt of a launch, in order."""

    __tablename__ = "call_launches"

    call_id: Mapped[int] = mapped_column(
        ForeignKey("api_calls.id", ondelete="CASCADE"), primary_key=True
    )
    launch_id: Mapped[int] = mapped_column(
        ForeignKey("launches.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    #: Position of the launch in the request body, as amoCRM's `request_id` counts.
    position: Mapped[int] = mapped_column(Integer)


class RateLimit(Base):
    """The request budget to amoCRM, shared by every dispatcher through one row.

    Dispatchers lock this row to take a request slot, so that N of them together
    never exceed AMOCRM_MAX_RPS; a 429 or 403 seen by one slows or pauses them all.
    """

    __tablename__ = "rate_limits"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    #: No request before this moment (after a 429: back off; after a 403: pause).
    hold_until: Mapped[datetime | None]
    hold_reason: Mapped[str | None] = mapped_column(Text)
    #: 429s in a row: the back-off grows with them, one success resets it.
    consecutive_429: Mapped[int] = mapped_column(Integer, default=0)
    #: 5xx answers and connection failures in a row: the same, for an amoCRM outage.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime]


class DispatcherRow(Base):
    """A running (or dead) dispatcher process and its heartbeat."""

    __tablename__ = "dispatchers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime] = mapped_column(index=True)
    stopped_at: Mapped[datetime | None]


class OAuthToken(Base):
    """The account's OAuth tokens; a refresh replaces both in one transaction."""

    __tablename__ = "oauth_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    access_token: Mapped[str] = mapped_column(Text)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class AuditEntry(Base):
    """One operator action (retry, cancel; one launch or a whole filter): who, what,
    how many. Written in the transaction that made the change."""

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    #: Which credential acted: `admin` (console), `cli`.
    actor: Mapped[str] = mapped_column(String(16))
    #: `retry` or `cancel`.
    action: Mapped[str] = mapped_column(String(16))
    #: What was asked for, as people read it (`launch #12`, `status=failed rule=welcome`).
    target: Mapped[str] = mapped_column(Text)
    #: Launches the action was asked to change, and those it did change.
    requested: Mapped[int] = mapped_column(Integer)
    changed: Mapped[int] = mapped_column(Integer)


class AuditLaunch(Base):
    """Which launches an audit entry changed, so each launch shows its own history."""

    __tablename__ = "audit_launches"

    audit_id: Mapped[int] = mapped_column(
        ForeignKey("audit_entries.id", ondelete="CASCADE"), primary_key=True
    )
    launch_id: Mapped[int] = mapped_column(
        ForeignKey("launches.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class LoginFailure(Base):
    """One refused console login: the client address it came from, and when.

    Counted per address over a sliding window to lock guessing out (`store.logins`);
    in the database so that every gunicorn worker, host and restart sees the same
    count. Rows older than the window are deleted as new ones come.
    """

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_address", "address", "failed_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: The client address as the console saw it (see CONSOLE_PROXY_HOPS).
    address: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(index=True)


class QueuedDelivery(Base):
    """A large delivery stored raw and answered 200 at once, whose events a dispatcher
    expands into launches right after (`store.queue`, `dispatch.expander`).

    The body stays in `deliveries` (never copied); this row is the work: who holds it
    (a claim token, fenced like a launch's), how far it got (both counts advance in the
    transaction that stores their rows, so a crash resumes where the last chunk ended),
    and how it ended. Kept after it finishes, as the delivery's expansion record.
    """

    __tablename__ = "delivery_queue"
    __table_args__ = (
        # The expander's claim and the health check: unfinished rows, oldest first.
        Index("ix_delivery_queue_waiting", "finished_at", "queued_at"),
    )

    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    queued_at: Mapped[datetime]
    #: The dispatcher expanding it, and a token fresh for every claim: a chunk is
    #: stored only while its expander still holds this token.
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    #: Refreshed by every chunk: a claim older than DISPATCHER_DEAD_AFTER is stale.
    claimed_at: Mapped[datetime | None]
    #: Times it was claimed: more than one means an expander died or let go of it.
    claims: Mapped[int] = mapped_column(Integer, default=0)
    #: Launches its events plan (known once a dispatcher decoded it), and how many of
    #: them, and of its entity rows, are stored.
    planned: Mapped[int | None] = mapped_column(Integer)
    launches_done: Mapped[int] = mapped_column(Integer, default=0)
    entities_done: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None]
    #: Why it ended `rejected` (the body does not decode).
    error: Mapped[str | None] = mapped_column(Text)
