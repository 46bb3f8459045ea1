"""What a call to amoCRM came to, on the wire: an answer, or an exception that says
whether the request certainly never left (`NOT_SENT`: safe to resend) or may have
reached amoCRM (`UNCERTAIN`: resending could start a bot twice).

What an answer's body means is `answers` (pure); this module needs requests' and
urllib3's exception classes and responses, so it lives apart from it.
"""

from __future__ import annotations

import http.client
import math
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from automation.amocrm.answers import (
    ERROR_CHARS,
    CallResult,
    Outcome,
    body_excerpt,
    classify_answer,
    scrub,
)


@dataclass
class Clock:
    """Wall-clock start for the record, monotonic start for the duration."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _start: float = field(default_factory=time.perf_counter)

    def stop(self) -> tuple[datetime, float]:
        elapsed = time.perf_counter() - self._start
        return self.started_at + timedelta(seconds=elapsed), round(elapsed * 1000, 3)


def answered_call(response: requests.Response, task_count: int, clock: Clock) -> CallResult:
    finished_at, duration_ms = clock.stop()
    outcome, indexes, error = classify_answer(response.status_code, response.content, task_count)
    return CallResult(
        outcome=outcome,
        status_code=response.status_code,
        body_excerpt=body_excerpt(response.content),
        error=error,
        bad_indexes=indexes,
        started_at=clock.started_at,
        finished_at=finished_at,
        duration_ms=duration_ms,
        retry_after=retry_after(response) if outcome is Outcome.RATE_LIMITED else None,
    )


def retry_after(response: requests.Response) -> float | None:
    """Seconds a `Retry-After` header asks for (delay-seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


#: Causes meaning the request (or part of it) was written before things broke.
_UNCERTAIN_CAUSES: tuple[type[BaseException], ...] = (
    ReadTimeoutError,
    ProtocolError,
    http.client.HTTPException,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
#: Causes raised while connecting, before any byte of the request was written.
#: (NameResolutionError is a NewConnectionError; both subclass ConnectTimeoutError.)
_NOT_SENT_CAUSES: tuple[type[BaseException], ...] = (
    NewConnectionError,
    ConnectTimeoutError,
    ssl.SSLCertVerificationError,
)
#: requests raises these while preparing the request, before opening a connection.
_UNSENDABLE = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidJSONError,
)


def classify_exception(exc: BaseException) -> Outcome:
    """NOT_SENT when the request certainly never left, UNCERTAIN otherwise.

    requests wraps urllib3's errors, so the whole cause chain is inspected. When in
    doubt the answer is UNCERTAIN: a launch wrongly held back costs an operator a look,
    a launch wrongly resent costs a customer a duplicate conversation.
    """
    if isinstance(exc, (requests.ConnectTimeout, *_UNSENDABLE)):
        return Outcome.NOT_SENT
    if isinstance(exc, (requests.ReadTimeout, requests.exceptions.ChunkedEncodingError)):
        return Outcome.UNCERTAIN
    causes = list(_causes(exc))
    if any(isinstance(cause, _UNCERTAIN_CAUSES) for cause in causes):
        return Outcome.UNCERTAIN
    if any(isinstance(cause, _NOT_SENT_CAUSES) for cause in causes):
        return Outcome.NOT_SENT
    return Outcome.UNCERTAIN


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps: args, urllib3's `reason`, `__cause__`, `__context__`."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 50:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [*current.args, getattr(current, "reason", None)]
        linked += [current.__cause__, current.__context__]
        pending += [item for item in linked if isinstance(item, BaseException)]


def unsendable_token(clock: Clock) -> CallResult:
    """NOT_SENT: http.client would raise a bare ValueError quoting the token."""
    error = "the token provider returned a token with spaces, line breaks or non-ASCII"
    return unanswered(Outcome.NOT_SENT, error, clock)


def failed_call(exc: BaseException, clock: Clock, secrets: Sequence[str]) -> CallResult:
    error = scrub(f"{type(exc).__name__}: {exc}", secrets)
    return unanswered(classify_exception(exc), error[:ERROR_CHARS], clock)


def unanswered(outcome: Outcome, error: str, clock: Clock) -> CallResult:
    finished_at, duration_ms = clock.stop()
    return CallResult(
        outcome=outcome,
        status_code=None,
        body_excerpt="",
        error=error,
        bad_indexes=(),
        started_at=clock.started_at,
        finished_at=finished_at,
        duration_ms=duration_ms,
    )
