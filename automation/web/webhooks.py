"""The webhook endpoint: HTTP only (secret, limits, status codes).

amoCRM waits at most 2 s, counts only 100–299 as delivered and disables a webhook after
about 100 bad answers in 2 hours. So this path does no network I/O, answers a payload
problem with a 4xx that names it (never a 5xx), answers 503 only when we could not
store the delivery (amoCRM retries those), and says 200 only after the commit.

A body too large to decode and store in well under a second (more than `INLINE_FIELDS`
fields at a glance, or more than `INLINE_LAUNCHES` launches or `INLINE_ENTITIES`
entities once decoded) is stored raw instead and answered `queued`; a dispatcher
expands its launches right after (`store.queue`, `dispatch.expander`).
"""

from __future__ import annotations

import hmac
import logging
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from automation import metrics
from automation.errors import CommitterUnavailable, PayloadError
from automation.events.glance import Glance, glance, require_account
from automation.events.mentions import describe_entities, named_entities
from automation.events.payloads import Account, Payload, decode_body
from automation.rules.load import PlannedLaunch
from automation.store.intake import Enqueued, Inbound, Rows, store
from automation.store.queue import RawDelivery, queue_delivery
from automation.web.bodies import Refusal, read_body
from automation.web.runtime import Runtime, runtime

log = logging.getLogger("automation.webhooks")
bp = Blueprint("webhooks", __name__)

ACCEPTED_TYPES = ("application/x-www-form-urlencoded", "application/json")
#: Form fields (or JSON values) beyond which a body is queued without decoding it:
#: 10,000 decode in about 150 ms here, 30,000 in half a second.
INLINE_FIELDS = 10_000
#: Launches, and entities, beyond which a decoded body is queued rather than stored in
#: the request: storing them holds the write lock that every other webhook waits for.
INLINE_LAUNCHES = 200
INLINE_ENTITIES = 1_000


def error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": message, **extra}), status


@bp.post("/webhooks/amocrm/<secret>", strict_slashes=False)
def receive(secret: str) -> tuple[Response, int]:
    """Decode, match, store in one transaction, then acknowledge."""
    started = time.perf_counter()
    state = runtime()
    problem = _check_request(state, secret)
    if problem is not None:
        return problem
    body = read_body(request, state.settings.max_body_bytes)
    if isinstance(body, Refusal):
        return refuse(body.status, body.message)
    received_at = datetime.now(UTC)
    try:
        seen = glance(body, request.mimetype == "application/json")
    except PayloadError as exc:
        return refuse(400, str(exc))
    if seen.fields > INLINE_FIELDS:
        return _queue_at_a_glance(state, body, seen, received_at, started)
    try:
        # With its charset, if any; the arrival time keys changes the body cannot date.
        payload = decode_body(body, request.content_type or "", received_at=received_at)
    except PayloadError as exc:
        return refuse(400, str(exc))
    forbidden = _check_account(state, payload.account)
    if forbidden is not None:
        return forbidden
    version_id, planned = _plan(state, payload, received_at)
    entities = named_entities(payload)
    if len(planned) > INLINE_LAUNCHES or len(entities) > INLINE_ENTITIES:
        return _queue(state, body, payload.account, received_at, version_id, started)
    try:
        stored = _store(state, body, payload, received_at, version_id, planned)
    except SQLAlchemyError as exc:
        return _unavailable(exc)
    except CommitterUnavailable as exc:
        return refuse(503, str(exc))
    _log_stored(stored, entities, payload, started)
    return jsonify(
        delivery_id=stored.delivery_id, events=stored.events, launches=stored.launches
    ), 200


def database_reason(exc: SQLAlchemyError) -> str:
    """What the database said, for the operator: the driver's error class and the first
    line of its message (a deadlock, a lost connection and a full disk all reach us as
    OperationalError). The driver's own message, not SQLAlchemy's, which appends the
    statement and its parameters, that is the customer's data."""
    driver = getattr(exc, "orig", None) or exc
    lines = str(driver).strip().splitlines()
    kind = f"{type(driver).__module__}.{type(driver).__name__}"
    return f"database error {kind}: {lines[0][:200]}" if lines else f"database error {kind}"


def refuse(status: int, message: str, *, why: str | None = None) -> tuple[Response, int]:
    """Answer a webhook we do not store, with one log line saying why (issue: amoCRM
    disables a webhook after ~100 bad answers, and the operator looks for them here).

    The line names the remote address and the declared length, never the URL (which
    holds the secret); `why` replaces the answer's message where that says too little.
    """
    length = request.content_length
    log.log(
        logging.ERROR if status >= 500 else logging.WARNING,
        "webhook rejected status=%s remote=%s length=%s reason=%s",
        status,
        request.remote_addr,
        "chunked" if length is None and request.headers.get("Transfer-Encoding") else length,
        why or message,
    )
    return error(status, message)


def _check_request(state: Runtime, secret: str) -> tuple[Response, int] | None:
    """Secret, size and content type, before reading the body."""
    expected = state.settings.webhook_secret
    if expected is None:
        return refuse(
            503,
            "the webhook is not configured: set WEBHOOK_SECRET and use it as the last "
            "path segment of the webhook URL",
        )
    if not hmac.compare_digest(secret.encode(), expected.get_secret_value().encode()):
        return refuse(404, "not found", why="wrong secret")
    limit = state.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return refuse(413, f"body of {request.content_length} bytes exceeds MAX_BODY_BYTES={limit}")
    if request.mimetype not in ACCEPTED_TYPES:
        got = request.mimetype or "none"
        accepted = " or ".join(ACCEPTED_TYPES)
        return refuse(415, f"content type {got!r} not supported; expected {accepted}")
    return None


def _check_account(state: Runtime, account: Account) -> tuple[Response, int] | None:
    """With AMOCRM_ACCOUNT_ID or AMOCRM_SUBDOMAIN set, only that account may post."""
    settings = state.settings
    expected_id = settings.amocrm_account_id
    if expected_id is not None and account.id != expected_id:
        said = "no account[id]" if account.id is None else f"{account.id_field} {account.id}"
        return refuse(403, f"webhook with {said}; AMOCRM_ACCOUNT_ID allows only {expected_id}")
    if settings.amocrm_subdomain is not None and account.subdomain != settings.amocrm_subdomain:
        said = (
            "no account[subdomain]"
            if account.subdomain is None
            else f"account[subdomain] {account.subdomain!r}"
        )
        return refuse(
            403, f"webhook with {said}; AMOCRM_SUBDOMAIN allows only {settings.amocrm_subdomain!r}"
        )
    return None


def _plan(
    state: Runtime, payload: Payload, now: datetime
) -> tuple[int | None, list[PlannedLaunch]]:
    """The current rules version's id and the launches it plans for the payload."""
    rules = state.rules.maybe_reload()
    assert rules is not None, "Runtime.build refuses to start without rules"
    version = state.rules_version(rules)  # from memory: recorded when the file loaded
    return version.id, rules.plan(payload.events, now)


def _store(
    state: Runtime,
    body: bytes,
    payload: Payload,
    now: datetime,
    version_id: int | None,
    planned: list[PlannedLaunch],
) -> Enqueued:
    inbound = Inbound(
        body, request.content_type or "", request.remote_addr, now, payload, version_id
    )
    rows = Rows.of(inbound, planned)  # built before the transaction: it holds the write lock
    if state.settings.group_commit and request.environ.get("wsgi.multithread"):
        stored = state.committer.store(rows)  # returns after the commit holding the rows
    else:
        with state.engine.begin() as connection:  # sync workers: one request at a time
            stored = store(connection, rows)
    # Only here, after the commit, does the caller answer 200 (and count it).
    metrics.webhook_stored(payload, planned, stored)
    return stored


def _queue_at_a_glance(
    state: Runtime, body: bytes, seen: Glance, now: datetime, started: float
) -> tuple[Response, int]:
    """Queue a body too large to decode now, its account checked from a glance."""
    try:
        account_id = require_account(seen, INLINE_FIELDS)
    except PayloadError as exc:
        return refuse(400, str(exc))
    account = Account(id=account_id, subdomain=seen.account_subdomain)
    forbidden = _check_account(state, account)
    if forbidden is not None:
        return forbidden
    rules = state.rules.maybe_reload()
    assert rules is not None, "Runtime.build refuses to start without rules"
    return _queue(state, body, account, now, state.rules_version(rules).id, started)


def _queue(
    state: Runtime,
    body: bytes,
    account: Account,
    now: datetime,
    version_id: int | None,
    started: float,
) -> tuple[Response, int]:
    """Store the body raw as a `queued` delivery (committed before the 200, as every
    webhook is); a dispatcher expands its launches right after."""
    raw = RawDelivery(
        body,
        request.content_type or "",
        request.remote_addr,
        now,
        account.id,
        account.subdomain,
        version_id,
    )
    try:
        with state.engine.begin() as connection:
            delivery_id = queue_delivery(connection, raw)
    except SQLAlchemyError as exc:
        return _unavailable(exc)
    metrics.webhook_queued()
    log.info(
        "webhook delivery=%s account=%s status=queued bytes=%s ms=%.1f",
        delivery_id,
        account.id,
        len(body),
        (time.perf_counter() - started) * 1000,
    )
    # `events` and `launches` as every 200 has them (the contract scripts read): none
    # stored yet; `status` says they come with the expansion.
    return jsonify(delivery_id=delivery_id, events=0, launches=0, status="queued"), 200


def _unavailable(exc: SQLAlchemyError) -> tuple[Response, int]:
    return refuse(
        503,
        "database unavailable; the webhook was not stored, retry later",
        why=database_reason(exc),
    )


def _log_stored(
    stored: Enqueued, entities: list[tuple[str, int]], payload: Payload, started: float
) -> None:
    log.info(
        "webhook delivery=%s account=%s status=%s events=%s launches=%s skipped=%s "
        "duplicates=%s entities=%s ms=%.1f",
        stored.delivery_id,
        payload.account.id,
        stored.status.value,
        stored.events,
        stored.launches,
        stored.skipped,
        stored.duplicates,
        describe_entities(entities),
        (time.perf_counter() - started) * 1000,
    )
