"""What amoCRM's answers mean: outcomes, blamed tasks, error texts, and their value types.

Whether a salesbot call was accepted, refused, or may safely be sent again is the rule that
keeps a customer from getting a bot twice. It depends only on a status and a body, so it lives
apart from the HTTP client in `automation.amocrm`: it can be read and tested without a socket,
and modules that only handle results (the dispatcher, the token store) get plain values
with no session or `requests` object in them. Classifying a transport exception stays in
`automation.amocrm`, since it needs requests' and urllib3's exception classes.
"""

from __future__ import annotations

import contextlib
import enum
import http
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

BODY_EXCERPT_CHARS = 2000
#: Longest error text kept from an answer or an exception.
ERROR_CHARS = 500


class Outcome(enum.StrEnum):
    """What became of one salesbot call; the value is stable and can be stored."""

    #: 2xx with an empty body, `{}` or `success: true`: amoCRM will start the bots.
    ACCEPTED = "accepted"
    #: 2xx with `success: false`: amoCRM refused the batch as a whole.
    REFUSED = "refused"
    #: 400/422: amoCRM blames the batch; `bad_indexes` names the tasks it blames.
    BAD_REQUEST = "bad_request"
    #: 429: too many requests; slow down and retry.
    RATE_LIMITED = "rate_limited"
    #: 401: the access token is expired or revoked; refresh it and retry.
    UNAUTHORIZED = "unauthorized"
    #: 403: the account's API access is blocked; never retry on a timer.
    FORBIDDEN = "forbidden"
    #: 5xx: amoCRM failed; retry later.
    SERVER_ERROR = "server_error"
    #: The request certainly did not reach amoCRM (refused, DNS, connect timeout).
    NOT_SENT = "not_sent"
    #: The request may have reached amoCRM and nothing says what became of it: no
    #: answer came back, or a 2xx whose body we cannot read.
    UNCERTAIN = "uncertain"
    #: Any other answer (1xx, 3xx, other 4xx).
    OTHER = "other"


#: Outcomes after which amoCRM certainly did not start the bots, so the batch may be sent
#: again. OTHER is one: a redirect is never followed and a 404 or 405 is not the salesbot
#: endpoint answering; it may be a proxy or a wrong AMOCRM_BASE_URL the operator fixes
#: while the launches wait (they fail after AMOCRM_MAX_ATTEMPTS if it is not).
_RETRYABLE = frozenset(
    {Outcome.RATE_LIMITED, Outcome.SERVER_ERROR, Outcome.NOT_SENT, Outcome.OTHER}
)
_STATUS_OUTCOMES = {
    400: Outcome.BAD_REQUEST,
    422: Outcome.BAD_REQUEST,
    401: Outcome.UNAUTHORIZED,
    403: Outcome.FORBIDDEN,
    429: Outcome.RATE_LIMITED,
}


@dataclass(frozen=True)
class SalesbotTask:
    """One launch: start bot `bot_id` on entity `entity_id` of type `entity_type`.

    `entity_type` is amoCRM's numeric code (1 contact, 2 lead, …: see
    `automation.events.payloads.ENTITY_TYPE_CODES`). Nothing is validated here on purpose: a bad
    value comes back as `BAD_REQUEST` naming its index, so the dispatcher isolates it
    through the same path as any item amoCRM rejects.
    """

    bot_id: int
    entity_id: int
    entity_type: int

    def as_json(self) -> dict[str, int]:
        return {"bot_id": self.bot_id, "entity_id": self.entity_id, "entity_type": self.entity_type}


@dataclass(frozen=True)
class CallResult:
    """The classified result of one salesbot call; never contains the token."""

    outcome: Outcome
    #: HTTP status, or None when no answer arrived.
    status_code: int | None
    #: The first `BODY_EXCERPT_CHARS` characters of the answer (problem+json, HTML, …).
    body_excerpt: str
    #: Short description of a failure (exception class and message, or HTTP title).
    error: str | None
    #: Indexes of the tasks amoCRM blamed in a 400, ascending; empty if none named.
    bad_indexes: tuple[int, ...]
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    #: Seconds from a `Retry-After` header, when amoCRM sent one (it rarely does).
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """True when sending the same batch again later is safe and may succeed."""
        return self.outcome in _RETRYABLE


@dataclass(frozen=True)
class TokenSet:
    """An OAuth token pair; the refresh token is single-use, so store it at once."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime


# --- answers -----------------------------------------------------------------------


def classify_answer(
    status: int, body: bytes, task_count: int
) -> tuple[Outcome, tuple[int, ...], str | None]:
    """Classify an HTTP answer: (outcome, blamed task indexes, error text or None)."""
    document = json_or_none(body)
    if 200 <= status < 300:
        outcome, error = _classify_success(body, document)
        return outcome, (), error
    outcome = _STATUS_OUTCOMES.get(status, Outcome.OTHER)
    if 500 <= status < 600:
        outcome = Outcome.SERVER_ERROR
    indexes = bad_indexes(document, task_count) if outcome is Outcome.BAD_REQUEST else ()
    return outcome, indexes, http_error_text(status, document)


def _classify_success(body: bytes, document: Any) -> tuple[Outcome, str | None]:
    """A 2xx is accepted unless its body says `success: false` or is not JSON at all.

    amoCRM.ru documents `{"_links": …, "success": true}`, Kommo an empty 202; both mean
    accepted. A 2xx with HTML or a JSON list may be amoCRM having run the bots or a
    proxy that never passed the request on; sending again could message customers
    twice, so it is UNCERTAIN, like a call that got no answer.
    """
    if not body.strip():
        return Outcome.ACCEPTED, None
    if not isinstance(document, dict):
        return Outcome.UNCERTAIN, "2xx answer whose body is not a JSON object"
    if _is_false(document.get("success", True)):
        return Outcome.REFUSED, "amoCRM answered success: false"
    return Outcome.ACCEPTED, None


def _is_false(value: Any) -> bool:
    return value is False or value in (0, "0", "false", "False")


def bad_indexes(document: Any, task_count: int) -> tuple[int, ...]:
    """Indexes of the tasks a 400 problem+json blames in `validation-errors[].request_id`.

    amoCRM sends `request_id` as a string ("0"); ints are accepted too. Ids that are
    missing, not numbers or outside the batch are ignored: they cannot name a task.
    """
    errors = document.get("validation-errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ()
    found = {_as_index(item.get("request_id")) for item in errors if isinstance(item, dict)}
    return tuple(sorted(i for i in found if i is not None and 0 <= i < task_count))


def _as_index(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def json_or_none(body: bytes) -> Any:
    """The parsed body, or None when it is empty or not JSON: callers judge the shape."""
    try:
        return json.loads(body) if body.strip() else None
    except ValueError:
        return None


def http_error_text(status: int, document: Any) -> str:
    """`HTTP 400: Bad Request: Request validation failed` from a problem+json body."""
    parts = [f"HTTP {status}"]
    if isinstance(document, dict):
        parts += [str(document[key]) for key in ("title", "detail") if document.get(key)]
    else:
        with contextlib.suppress(ValueError):
            parts.append(http.HTTPStatus(status).phrase)
    return ": ".join(parts)[:ERROR_CHARS]


def body_excerpt(body: bytes) -> str:
    """The start of `body`, enough to diagnose an answer without storing a whole page."""
    # amoCRM speaks UTF-8 everywhere; `response.text` would run charset detection.
    return body[: BODY_EXCERPT_CHARS * 4].decode("utf-8", "replace")[:BODY_EXCERPT_CHARS]


# --- secrets -----------------------------------------------------------------------


#: Characters that continue a token: a secret counts only where none stands beside it.
_TOKEN_CHAR = r"[A-Za-z0-9_\-]"


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every whole occurrence of a secret masked, so an error quoting a
    request can be shown and logged.

    Only whole occurrences: a one-letter client secret `y` must not turn the host
    `mybrand.amocrm.ru` into `m***brand.amocrm.ru` (the text would lie, and the mask
    would give the secret away). Secrets too short to mask safely are warned about at
    start (`automation.config.UNMASKABLE_LENGTH`).
    """
    for secret in secrets:
        if secret:
            whole = rf"(?<!{_TOKEN_CHAR}){re.escape(secret)}(?!{_TOKEN_CHAR})"
            text = re.sub(whole, "***", text)
    return text
