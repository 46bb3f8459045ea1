"""The webhook endpoint: HTTP only (secret, limits, status codes).

amoCRM waits at most 2 s, counts only 100–299 as delivered and disables a webhook after
about 100 bad answers in 2 hours. So this path does no network I/O, answers a payload
problem with a 4xx that names it (never a 5xx), answers 503 only when we could not
store the delivery (amoCRM retries those), and says 200 only after the commit.
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
from automation.errors import PayloadError
from automation.events.payloads import Payload, decode_body
from automation.store.intake import Enqueued, Inbound, Rows, store
from automation.web.runtime import Runtime, runtime

log = logging.getLogger("automation.webhooks")
bp = Blueprint("webhooks", __name__)

ACCEPTED_TYPES = ("application/x-www-form-urlencoded", "application/json")


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
    body = request.get_data(cache=False)
    limit = state.settings.max_body_bytes
    if len(body) > limit:  # chunked: read one byte past the limit (see create_app)
        return error(413, f"chunked body of more than {limit} bytes exceeds MAX_BODY_BYTES={limit}")
    received_at = datetime.now(UTC)
    try:
        # With its charset, if any; the arrival time keys changes the body cannot date.
        payload = decode_body(body, request.content_type or "", received_at=received_at)
    except PayloadError as exc:
        log.warning("webhook rejected remote=%s error=%s", request.remote_addr, exc)
        return error(400, str(exc))
    forbidden = _check_account(state, payload)
    if forbidden is not None:
        return forbidden
    try:
        stored = _store(state, body, payload, received_at)
    except SQLAlchemyError as exc:
        log.error("webhook not stored remote=%s error=%s", request.remote_addr, type(exc).__name__)
        return error(503, "database unavailable; the webhook was not stored, retry later")
    _log_stored(stored, payload, started)
    return jsonify(
        delivery_id=stored.delivery_id, events=stored.events, launches=stored.launches
    ), 200


def _check_request(state: Runtime, secret: str) -> tuple[Response, int] | None:
    """Secret, size and content type, before reading the body."""
    expected = state.settings.webhook_secret
    if expected is None:
        return error(
            503,
            "the webhook is not configured: set WEBHOOK_SECRET and use it as the last "
            "path segment of the webhook URL",
        )
    if not hmac.compare_digest(secret.encode(), expected.get_secret_value().encode()):
        log.warning("webhook with a wrong secret remote=%s", request.remote_addr)
        return error(404, "not found")
    limit = state.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return error(413, f"body of {request.content_length} bytes exceeds MAX_BODY_BYTES={limit}")
    if request.mimetype not in ACCEPTED_TYPES:
        got = request.mimetype or "none"
        accepted = " or ".join(ACCEPTED_TYPES)
        return error(415, f"content type {got!r} not supported; expected {accepted}")
    return None


def _check_account(state: Runtime, payload: Payload) -> tuple[Response, int] | None:
    """With AMOCRM_ACCOUNT_ID or AMOCRM_SUBDOMAIN set, only that account may post."""
    settings, account = state.settings, payload.account
    expected_id = settings.amocrm_account_id
    if expected_id is not None and account.id != expected_id:
        log.warning(
            "webhook from another account account=%s remote=%s", account.id, request.remote_addr
        )
        said = "no account[id]" if account.id is None else f"{account.id_field} {account.id}"
        return error(403, f"webhook with {said}; AMOCRM_ACCOUNT_ID allows only {expected_id}")
    if settings.amocrm_subdomain is not None and account.subdomain != settings.amocrm_subdomain:
        log.warning("webhook from another account subdomain=%s", account.subdomain)
        said = (
            "no account[subdomain]"
            if account.subdomain is None
            else f"account[subdomain] {account.subdomain!r}"
        )
        return error(
            403, f"webhook with {said}; AMOCRM_SUBDOMAIN allows only {settings.amocrm_subdomain!r}"
        )
    return None


def _store(state: Runtime, body: bytes, payload: Payload, now: datetime) -> Enqueued:
    rules = state.rules.maybe_reload()
    assert rules is not None, "Runtime.build refuses to start without rules"
    planned = [launch for event in payload.events for launch in rules.match(event, now)]
    inbound = Inbound(body, request.content_type or "", request.remote_addr, now, payload)
    rows = Rows.of(inbound, planned)  # built before the transaction: it holds the write lock
    with state.engine.begin() as connection:
        stored = store(connection, rows)
    # Only here, after the commit, does the caller answer 200 (and count it).
    metrics.webhook_stored(payload, planned, stored)
    return stored


def _log_stored(stored: Enqueued, payload: Payload, started: float) -> None:
    log.info(
        "webhook delivery=%s account=%s status=%s events=%s launches=%s skipped=%s "
        "duplicates=%s ms=%.1f",
        stored.delivery_id,
        payload.account.id,
        stored.status.value,
        stored.events,
        stored.launches,
        stored.skipped,
        stored.duplicates,
        (time.perf_counter() - started) * 1000,
    )
