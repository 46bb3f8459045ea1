"""The answers that handlers build as plain dicts (the webhook's, `/healthz`'s), as
pydantic models: `web.openapi` publishes their JSON Schemas, and the OpenAPI tests
hold every real answer to them, so a key added to a handler and not here fails.

Pydantic only, no Flask.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Doc(BaseModel):
    """A shape another module answers with as a plain dict; described here for the document."""

    model_config = ConfigDict(extra="forbid")


class WebhookAccepted(_Doc):
    """The webhook was stored (with its launches) before this answer."""

    delivery_id: int
    events: int
    launches: int


class WebhookQueued(_Doc):
    """A large webhook, stored raw before this answer; a dispatcher expands its launches
    right after (`GET /api/deliveries/{id}` shows how far)."""

    delivery_id: int
    #: 0: none stored yet, as every 200 has them; the expansion stores them.
    events: Literal[0]
    launches: Literal[0]
    status: Literal["queued"]


class HealthDatabase(_Doc):
    """The database answered; `schema_current` says whether it is at the code's revision."""

    reachable: Literal[True]
    schema_revision: str | None
    schema_current: bool
    last_webhook_at: datetime | None


class HealthDatabaseDown(_Doc):
    """The database did not answer; `error` is the exception's class name."""

    reachable: Literal[False]
    error: str
    schema_current: Literal[False]


class HealthRules(_Doc):
    """The rules in use; `last_error` is a reload that failed while the old rules ran on."""

    file: str
    loaded: bool
    loaded_at: datetime | None
    rule_count: int
    content_hash: str | None
    #: The stored rules version (`rules_versions`) new deliveries record.
    version_id: int | None
    version_first_loaded_at: datetime | None
    last_error: str | None


class HealthWebhook(_Doc):
    """Whether WEBHOOK_SECRET is set; without it every webhook gets 503."""

    configured: bool
    error: str | None = None


class HealthDispatch(_Doc):
    """Sending: dry run or not, the live dispatchers and the last heartbeat, what is
    due, and a shared hold if any."""

    dry_run: bool
    live_dispatchers: int
    last_heartbeat_at: datetime | None
    due_launches: int
    oldest_due_at: datetime | None
    #: Large webhooks stored raw whose launches are not expanded yet, and the oldest's
    #: arrival.
    queued_deliveries: int
    oldest_queued_at: datetime | None
    #: Of those no dispatcher holds, since when the longest-waiting one has waited.
    queued_unclaimed_since: datetime | None
    #: Of those being expanded, the oldest last progress (a chunk stored).
    queued_progress_at: datetime | None
    #: Either is more than 2 minutes ago (then `degraded`, the reason says which).
    queued_too_long: bool
    paused_until: datetime | None
    pause_reason: str | None


class HealthPartError(_Doc):
    """The part could not be read; `error` is the exception's class name."""

    error: str


class HealthPartUnknown(_Doc):
    """Empty: not asked, because the database is unreachable."""


class HealthCall(_Doc):
    """The newest finished amoCRM call and how it ended."""

    started_at: datetime
    outcome: str
    status_code: int | None
    error: str | None


class HealthAmocrm(_Doc):
    """The amoCRM calls started in the last `window_seconds` that have an outcome, how
    many of them failed (5xx, no answer, not sent, 401/403, other), and the newest call."""

    window_seconds: int
    calls: int
    failed: int
    last_call: HealthCall | None


class Health(_Doc):
    """`ok` and `degraded` (launches are not going out as they should) answer 200;
    `unhealthy` (webhooks are not stored) answers 503; `reasons` says why."""

    status: Literal["ok", "degraded", "unhealthy"]
    reasons: list[str]
    database: HealthDatabase | HealthDatabaseDown
    rules: HealthRules
    webhook: HealthWebhook
    dispatch: HealthDispatch | HealthPartError | HealthPartUnknown
    amocrm: HealthAmocrm | HealthPartError | HealthPartUnknown
