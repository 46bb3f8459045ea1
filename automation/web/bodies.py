"""Reading a webhook's body: whole, within MAX_BODY_BYTES, before a deadline.

gunicorn marks its input as terminated (`wsgi.input_terminated`), so werkzeug reads to
the stream's end: a client that declared 954 bytes and closed after 460 would be stored
as a shorter webhook, the rest lost (amoCRM never resends a 200). A chunked body over
the limit is cut by werkzeug at MAX_CONTENT_LENGTH, which is one byte over
MAX_BODY_BYTES so that reading that byte tells (see `create_app`). Broken chunked
framing raises gunicorn's parse error or its NoMoreData (an OSError).

A client that stalls mid-body holds its request thread (gthread: not the worker) only
until the deadline: each read of the socket waits at most what is left of it, then the
answer is 408 and gunicorn closes the connection (a body read that raised marks it
unusable). A client that trickles a byte at a time within each wait is bounded only by
the size a read asks for; a reverse proxy that buffers bodies removes that case.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from flask import Request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

#: Seconds a webhook's body may take to arrive once its headers did. amoCRM sends
#: small bodies at once and gives up after 2 s anyway.
BODY_SECONDS = 5.0
READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Refusal:
    """A body we will not store, and the answer that says why."""

    status: int
    message: str


def read_body(request: Request, limit: int, seconds: float | None = None) -> bytes | Refusal:
    """The whole body, or the refusal of one too long, cut short, malformed or late
    (after `seconds`, by default BODY_SECONDS)."""
    seconds = BODY_SECONDS if seconds is None else seconds
    declared = request.content_length
    deadline = time.monotonic() + seconds
    try:
        with _socket_deadline(request.environ.get("gunicorn.socket"), deadline) as wait:
            body = _read_to_limit(request.stream, limit, wait)
    except (ClientDisconnected, ParseException, OSError) as exc:
        if time.monotonic() >= deadline:
            return _late(seconds)
        if isinstance(exc, ClientDisconnected):
            return Refusal(400, _cut_short(declared, None))
        return Refusal(400, f"the chunked body is malformed ({_named(exc)}); nothing was stored")
    except RequestEntityTooLarge:
        body = b"x" * (limit + 1)  # werkzeug's own limit, one byte over ours
    if len(body) > limit:
        message = f"chunked body of more than {limit} bytes exceeds MAX_BODY_BYTES={limit}"
        return Refusal(413, message)
    if declared is not None and len(body) != declared:
        return Refusal(400, _cut_short(declared, len(body)))
    return body


def _read_to_limit(stream: IO[bytes], limit: int, wait: Any) -> bytes:
    """Read until the end or one byte past `limit`, each read bounded by `wait()`."""
    parts, size = [], 0
    while size <= limit:
        wait()
        part = stream.read(min(READ_SIZE, limit + 1 - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


@contextmanager
def _socket_deadline(sock: Any, deadline: float) -> Iterator[Any]:
    """Yield a function that bounds the next socket read by what is left until
    `deadline`; the socket's own timeout is restored afterwards (gunicorn writes the
    answer and reads the next request with it). No socket (not gunicorn): no bound."""
    if sock is None:
        yield lambda: None
        return
    previous = sock.gettimeout()

    def wait() -> None:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))

    try:
        yield wait
    finally:
        sock.settimeout(previous)


def _late(seconds: float) -> Refusal:
    return Refusal(
        408,
        f"the body did not arrive within {seconds:g}s of the headers; nothing was stored, "
        "send it whole",
    )


def _cut_short(declared: int | None, got: int | None) -> str:
    arrived = "" if got is None else f" after {got}"
    return (
        f"the body ended{arrived} of the {declared} bytes its Content-Length declared; "
        "nothing was stored, send it whole"
    )


def _named(exc: Exception) -> str:
    """gunicorn's parse errors say what broke (`Invalid chunk size: …`); an OSError of
    a vanished client says little beyond its type."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
