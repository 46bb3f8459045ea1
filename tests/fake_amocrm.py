"""A fake amoCRM on loopback: the salesbot API and the OAuth endpoint over real HTTP.

Tests and benchmarks point the client (or the whole dispatcher) at `FakeAmoCRM.url`
and turn knobs to make amoCRM misbehave the ways the real one does: 429 with an HTML
body, 403 after repeated 429s, 5xx, answers that never come, dropped connections,
expired tokens, rejected bot ids. Every call is recorded, so a test can assert what
reached "amoCRM" (`launches()`) and how fast (`max_requests_in_any_window()`).

Per salesbot call, the checks run in this order (each knob counts down separately):
blocked → 403; over `limit_rps` → 429; `drop_next` → close without answering;
`fail_next` → its status; bad token → 401; invalid body or `reject_bots` → 400;
`refuse_next` → 202 `success: false`; else 202 and the tasks count as launched. Then
`stall_next` delays, `drop_next(after_processing=True)` withholds and `truncate_next`
cuts short the answer so decided: the call was processed, only the answer is lost.

With `journal=PATH` every salesbot call is also appended to that file as one JSON line
(arrival time, status, whether its tasks were launched, the tasks), flushed at once:
a checker in another process (bench/chaos.py) reads what reached "amoCRM" from there,
not from the database of the server under test.

`/api/v4/webhooks` (GET with `filter[destination]`, POST, DELETE) keeps the account's
subscriptions: `add_webhook` seeds one, `disable_webhook` turns one off as amoCRM does
after too many bad answers, `forbid_webhooks` answers 403 as to a non-admin's token.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast
from urllib.parse import parse_qs

SALESBOT_PATH = "/api/v2/salesbot/run"
OAUTH_PATH = "/oauth2/access_token"
WEBHOOKS_PATH = "/api/v4/webhooks"
MAX_TASKS = 100
ENTITY_TYPES = frozenset({1, 2, 3, 12})

ACCESS_TOKEN = "fake-access-token"
REFRESH_TOKEN = "fake-refresh-token"
CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret"
AUTH_CODE = "fake-auth-code"
REDIRECT_URI = "https://automation.example/oauth"

ACCEPTED_BODY = {"_links": {"self": {"href": SALESBOT_PATH, "method": "post"}}, "success": True}
UNAUTHORIZED_BODY = {
    "title": "Unauthorized",
    "type": "https://httpstatus.es/401",
    "status": 401,
    "detail": "Invalid user name or password",
}
RATE_LIMITED_HTML = (
    b"<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    b"<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
HAL_JSON = "application/hal+json"
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class RecordedCall:
    """One request as the fake saw it, and what it did with it."""

    monotonic: float
    wall: datetime
    method: str
    path: str
    #: Request headers; the Authorization value is never kept here.
    headers: dict[str, str]
    token_presented: bool
    #: The bearer token presented, if any (fake tokens only, so it is safe to keep).
    token: str | None
    #: The parsed JSON body, or None when absent or not JSON.
    body: Any
    #: The status answered (late when stalled), or None when dropped unanswered.
    status: int | None
    #: True when the tasks were launched (counted in `launches()`).
    accepted: bool = False
    stalled: bool = False
    dropped: bool = False
    #: Client port: calls sharing it came over one kept-alive connection.
    client_port: int = 0
    #: The raw query string (`filter%5Bdestination%5D=…`), empty when none.
    query: str = ""
    #: `time.monotonic()` when its request line was read (`monotonic` is after the
    #: body): a client paused between headers and body sent the request at this time.
    arrived: float = 0.0


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Plan:
    """What the handler thread does once the fake has decided, outside the lock."""

    answer: _Answer | None
    stall: float = 0.0
    reset: bool = False
    truncate: bool = False


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    client_port: int
    query: str = ""
    arrived: float = 0.0

    @property
    def token(self) -> str | None:
        value = self.headers.get("Authorization")
        if value is None:
            return None
        scheme, _, token = value.partition(" ")
        return token if scheme.lower() == "bearer" else ""

    def json(self) -> Any:
        try:
            return json.loads(self.raw_body) if self.raw_body else None
        except ValueError:
            return None


@dataclass
class _Knobs:
    rps: int | None = None
    rps_window: float = 1.0
    block_after: int | None = None
    count_429: int = 0
    blocked: bool = False
    fails: deque[tuple[int, str | None]] = field(default_factory=deque)
    stalls: deque[float] = field(default_factory=deque)
    drops_before: deque[bool] = field(default_factory=deque)
    drops_after: deque[bool] = field(default_factory=deque)
    truncations: int = 0
    refusals: int = 0
    rejected_bots: frozenset[int] = frozenset()
    empty_body: bool = False
    unreadable: int = 0
    webhooks_forbidden: bool = False
    webhooks_problem: tuple[int, str] | None = None


def _json_answer(status: int, document: Any, content_type: str = PROBLEM_JSON) -> _Answer:
    return _Answer(status, json.dumps(document).encode(), content_type)


def _problem(status: int, title: str, detail: str, **extra: Any) -> _Answer:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status}
    return _json_answer(status, {**body, "detail": detail, **extra})


def _oauth_problem(status: int, hint: str) -> _Answer:
    """amoCRM's OAuth errors (league/oauth2-server behind a problem+json wrapper)."""
    return _json_answer(
        status,
        {
            "hint": hint,
            "title": "Некорректный запрос" if status == 400 else "Unauthorized",
            "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
            "status": status,
            "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
        },
    )


def max_in_window(times: Iterable[float], seconds: float) -> int:
    """Most arrivals within any half-open window `[t, t + seconds)`.

    Half-open because a client pacing exactly N per second sends its (N+1)-th request
    one full second after the first, and that is within an N-per-second limit.
    """
    ordered = sorted(times)
    best, start = 0, 0
    for end, arrival in enumerate(ordered):
        while arrival - ordered[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def _task_errors(index: int, task: Any, rejected: frozenset[int]) -> dict[str, Any] | None:
    """amoCRM's `validation-errors` entry for one task, or None when it is valid."""
    if not isinstance(task, dict):
        errors = [{"code": "InvalidType", "path": "", "detail": "This value should be an object."}]
        return {"request_id": str(index), "errors": errors}
    errors = [e for key in ("bot_id", "entity_id") if (e := _positive_int_error(task, key))]
    entity_type = task.get("entity_type")
    if isinstance(entity_type, bool) or entity_type not in ENTITY_TYPES:
        detail = "The value you selected is not a valid choice."
        errors.append({"code": "NotSupportedChoice", "path": "entity_type", "detail": detail})
    if task.get("bot_id") in rejected:
        errors.append({"code": "NotFound", "path": "bot_id", "detail": "Bot not found."})
    return {"request_id": str(index), "errors": errors} if errors else None


def _positive_int_error(task: dict[str, Any], key: str) -> dict[str, str] | None:
    value = task.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        return {"code": "InvalidType", "path": key, "detail": "This value should be of type int."}
    if value <= 0:
        return {"code": "TooLow", "path": key, "detail": "This value should be positive."}
    return None


def _validation_failure(errors: list[dict[str, Any]]) -> _Answer:
    return _problem(
        400, "Bad Request", "Request validation failed", **{"validation-errors": errors}
    )


def validate_tasks(body: Any, rejected: frozenset[int] = frozenset()) -> _Answer | None:
    """The 400 amoCRM answers for a body that is not 1..100 valid tasks, else None."""
    if not isinstance(body, list) or not body:
        detail = "This value should be a non-empty array of tasks."
        return _validation_failure(
            [{"errors": [{"code": "InvalidType", "path": "", "detail": detail}]}]
        )
    if len(body) > MAX_TASKS:
        detail = f"This collection should contain {MAX_TASKS} elements or less."
        return _validation_failure(
            [{"errors": [{"code": "TooMany", "path": "", "detail": detail}]}]
        )
    errors = [e for i, task in enumerate(body) if (e := _task_errors(i, task, rejected))]
    return _validation_failure(errors) if errors else None


#: Every `settings` name amoCRM accepts for `/api/v4/webhooks` (protocol §1.2).
WEBHOOK_SETTINGS = frozenset(
    {
        "status_lead",
        *(
            f"{a}_{family}"
            for family in ("lead", "contact", "company")
            for a in ("add", "update", "delete", "restore", "responsible", "note")
        ),
        *(f"{a}_customer" for a in ("add", "update", "delete", "responsible", "note")),
        *(f"{a}_task" for a in ("add", "update", "delete", "responsible")),
        *("add_talk", "update_talk", "add_message", "add_outgoing_message"),
        *("add_unsorted", "update_unsorted", "delete_unsorted", "add_chat_template_review"),
    }
)
ACCOUNT_ID = 30112233
ADMIN_USER_ID = 10004026


def _invalid(path: str, detail: str, code: str = "InvalidType") -> dict[str, str]:
    return {"code": code, "path": path, "detail": detail}


def _webhook_errors(destination: Any, settings: Any, sort: Any) -> list[dict[str, str]]:
    """amoCRM's complaints about a `POST /api/v4/webhooks` body; empty when valid.

    A destination without the trailing slash is refused as amoCRM's UI refuses it
    ("Invalid URL", protocol §1.4).
    """
    errors = []
    if not (
        isinstance(destination, str)
        and destination.startswith(("http://", "https://"))
        and destination.endswith("/")
    ):
        errors.append(_invalid("destination", "Invalid URL", "InvalidUrl"))
    if not isinstance(settings, list) or not settings:
        errors.append(_invalid("settings", "This value should be a non-empty array."))
    else:
        detail = "The value you selected is not a valid choice."
        errors += [
            _invalid(f"settings.{i}", detail, "NotSupportedChoice")
            for i, name in enumerate(settings)
            if name not in WEBHOOK_SETTINGS
        ]
    if sort is not None and (not isinstance(sort, int) or isinstance(sort, bool)):
        errors.append(_invalid("sort", "This value should be of type int."))
    return errors


class FakeAmoCRM:
    """A fake amoCRM account on `http://127.0.0.1:<port>` (a free port unless given);
    every knob is thread-safe."""

    def __init__(
        self,
        *,
        access_token: str = ACCESS_TOKEN,
        refresh_token: str = REFRESH_TOKEN,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        auth_code: str = AUTH_CODE,
        redirect_uri: str = REDIRECT_URI,
        expires_in: int = 86400,
        journal: str | Path | None = None,
        port: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._port = port
        self._journal_path = None if journal is None else Path(journal)
        self._journal: IO[str] | None = None
        self._stopping = threading.Event()
        self._calls: list[RecordedCall] = []
        self._served: deque[float] = deque()
        self._knobs = _Knobs()
        self._access_token = access_token
        self._refresh_token = refresh_token
        self._auth_code: str | None = auth_code
        self._client = (client_id, client_secret, redirect_uri)
        self._expires_in = expires_in
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        #: Webhook subscriptions by destination, as `GET /api/v4/webhooks` lists them.
        self._webhooks: dict[str, dict[str, Any]] = {}

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeAmoCRM:
        """Listen on a free loopback port and serve in a daemon thread."""
        if self._server is None:
            self._stopping.clear()
            if self._journal_path is not None and self._journal is None:
                self._journal = self._journal_path.open("a", encoding="utf-8")
            self._server = _Server(self, self._port)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name="fake-amocrm",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake stalled answers and close kept-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()

    def __enter__(self) -> FakeAmoCRM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeAmoCRM is not running: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- state -------------------------------------------------------------------

    @property
    def access_token(self) -> str:
        with self._lock:
            return self._access_token

    @property
    def refresh_token(self) -> str:
        with self._lock:
            return self._refresh_token

    @property
    def calls(self) -> list[RecordedCall]:
        """A snapshot of every recorded call, in the order the fake handled them."""
        with self._lock:
            return list(self._calls)

    def salesbot_calls(self) -> list[RecordedCall]:
        return [call for call in self.calls if call.path == SALESBOT_PATH]

    def launches(self) -> list[tuple[int, int, int]]:
        """Every launched (bot_id, entity_id, entity_type), duplicates included."""
        return [
            (task["bot_id"], task["entity_id"], task["entity_type"])
            for call in self.salesbot_calls()
            if call.accepted
            for task in call.body
        ]

    def max_requests_in_any_window(self, seconds: float = 1.0, *, include_429: bool = True) -> int:
        """Most salesbot calls that arrived within any `seconds`-long window.

        With `include_429=False` only the calls the limiter let through count; those
        never exceed `limit_rps(n)`. The default counts every arrival: the client's pace.
        """
        calls = self.salesbot_calls()
        return max_in_window(
            (c.monotonic for c in calls if include_429 or c.status != 429), seconds
        )

    # --- knobs -------------------------------------------------------------------

    def limit_rps(self, n: int | None, window: float = 1.0) -> None:
        """Answer 429 (HTML) to a call when n calls were served in the last `window`
        seconds (amoCRM's is a second; a shorter one forgives arrival jitter)."""
        with self._lock:
            self._knobs.rps, self._knobs.rps_window = n, window

    def block_after(self, n_429s: int | None) -> None:
        """After that many 429s, answer 403 to everything until `unblock()`."""
        with self._lock:
            self._knobs.block_after, self._knobs.count_429 = n_429s, 0

    def unblock(self) -> None:
        with self._lock:
            self._knobs.blocked, self._knobs.count_429 = False, 0

    def fail_next(self, n: int, status: int = 500, retry_after: str | None = None) -> None:
        """Answer `status` to the next n salesbot calls, without processing them (with
        a `Retry-After` header if given: amoCRM documents none, a proxy may send one)."""
        with self._lock:
            self._knobs.fails.extend([(status, retry_after)] * n)

    def stall_next(self, n: int, seconds: float) -> None:
        """Process the next n calls, then hold each answer `seconds` (or until stop)."""
        with self._lock:
            self._knobs.stalls.extend([seconds] * n)

    def drop_next(self, n: int, *, after_processing: bool = False, reset: bool = False) -> None:
        """Close the connection of the next n calls without answering.

        By default the calls are not processed; with `after_processing` their tasks are
        launched first (the ambiguous case). `reset` closes with a TCP RST, not a FIN.
        """
        with self._lock:
            queue = self._knobs.drops_after if after_processing else self._knobs.drops_before
            queue.extend([reset] * n)

    def truncate_next(self, n: int) -> None:
        """Process the next n calls, then send half the answer's body and close."""
        with self._lock:
            self._knobs.truncations += n

    def expire_token(self) -> None:
        """Invalidate the access token: 401 until a new one comes from /oauth2/access_token."""
        with self._lock:
            self._access_token = f"expired-{secrets.token_hex(8)}"

    def reject_bots(self, ids: Iterable[int]) -> None:
        """Answer 400 to batches with any of these bot ids, naming each offending index."""
        with self._lock:
            self._knobs.rejected_bots = frozenset(ids)

    def refuse_next(self, n: int) -> None:
        """Answer 202 with `success: false` to the next n valid calls."""
        with self._lock:
            self._knobs.refusals += n

    def accept_unreadable_next(self, n: int) -> None:
        """Run the next n valid calls, then answer 202 with a body that is not JSON."""
        with self._lock:
            self._knobs.unreadable += n

    def accept_empty_body(self, on: bool = True) -> None:
        """Answer accepted calls with an empty 202, as Kommo documents."""
        with self._lock:
            self._knobs.empty_body = on

    def webhooks(self) -> list[dict[str, Any]]:
        """A snapshot of the account's webhook subscriptions, as amoCRM lists them."""
        with self._lock:
            return [json.loads(json.dumps(item)) for item in self._webhooks.values()]

    def add_webhook(
        self, destination: str, settings: Iterable[str], *, sort: int = 1, disabled: bool = False
    ) -> None:
        """Subscribe `destination` directly, as an admin would in amoCRM's settings page."""
        with self._lock:
            self._save_webhook(destination, list(settings), sort)
            self._webhooks[destination]["disabled"] = disabled

    def disable_webhook(self, destination: str) -> None:
        """Turn a webhook off, as amoCRM does after ~100 bad answers in 2 hours."""
        with self._lock:
            self._webhooks[destination]["disabled"] = True

    def forbid_webhooks(self, on: bool = True) -> None:
        """Answer 403 to `/api/v4/webhooks`, as for a token of a user who is not an admin."""
        with self._lock:
            self._knobs.webhooks_forbidden = on

    def refuse_webhooks(self, status: int, detail: str) -> None:
        """Answer the `/api/v4/webhooks` calls with this problem+json error, e.g. a
        detail that quotes what the request sent."""
        with self._lock:
            self._knobs.webhooks_problem = (status, detail)

    # --- request handling (called by handler threads) ----------------------------

    def _plan(self, request: _Request) -> _Plan:
        with self._lock:
            now, wall = time.monotonic(), datetime.now(UTC)
            if request.method == "POST" and request.path == SALESBOT_PATH:
                plan, accepted = self._plan_salesbot(request, now)
            elif request.method == "POST" and request.path == OAUTH_PATH:
                plan, accepted = _Plan(self._answer_oauth(request.json())), False
            elif request.path in (WEBHOOKS_PATH, f"{WEBHOOKS_PATH}/"):
                plan, accepted = _Plan(self._answer_webhooks(request)), False
            else:
                plan, accepted = _Plan(_problem(404, "Not Found", "No such route")), False
            self._record(request, plan, accepted, now, wall)
            return plan

    def _record(
        self, request: _Request, plan: _Plan, accepted: bool, now: float, wall: datetime
    ) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        call = RecordedCall(
            monotonic=now,
            wall=wall,
            method=request.method,
            path=request.path,
            headers=headers,
            token_presented="Authorization" in request.headers,
            token=request.token,
            body=request.json(),
            status=plan.answer.status if plan.answer else None,
            accepted=accepted,
            stalled=plan.stall > 0,
            dropped=plan.answer is None,
            client_port=request.client_port,
            query=request.query,
            arrived=request.arrived or now,
        )
        self._calls.append(call)
        if self._journal is not None and call.path == SALESBOT_PATH:
            self._write_journal(call)

    def _write_journal(self, call: RecordedCall) -> None:
        """One line per salesbot call, written under the lock, so in arrival order."""
        assert self._journal is not None
        tasks = call.body if isinstance(call.body, list) else None
        line = {
            "monotonic": call.monotonic,
            "arrived": call.arrived,
            "wall": call.wall.isoformat(),
            "status": call.status,
            "accepted": call.accepted,
            "dropped": call.dropped,
            "client_port": call.client_port,
            "tasks": tasks,
        }
        self._journal.write(json.dumps(line) + "\n")
        self._journal.flush()

    def _plan_salesbot(self, request: _Request, now: float) -> tuple[_Plan, bool]:
        knobs = self._knobs
        refusal = self._gatekeep(now)
        if refusal is not None:
            return _Plan(refusal), False
        if knobs.drops_before:
            return _Plan(None, reset=knobs.drops_before.popleft()), False
        answer, accepted = self._answer_salesbot(request)
        if knobs.stalls:
            return _Plan(answer, stall=knobs.stalls.popleft()), accepted
        if knobs.drops_after:
            return _Plan(None, reset=knobs.drops_after.popleft()), accepted
        if knobs.truncations:
            knobs.truncations -= 1
            return _Plan(answer, truncate=True), accepted
        return _Plan(answer), accepted

    def _gatekeep(self, now: float) -> _Answer | None:
        """403 when blocked, 429 over the rate limit; else count the call as served."""
        knobs = self._knobs
        if knobs.blocked:
            return _problem(403, "Forbidden", "Account is blocked")
        while self._served and now - self._served[0] >= knobs.rps_window:
            self._served.popleft()
        if knobs.rps is not None and len(self._served) >= knobs.rps:
            knobs.count_429 += 1
            knobs.blocked = knobs.block_after is not None and knobs.count_429 >= knobs.block_after
            return _Answer(429, RATE_LIMITED_HTML, "text/html")
        self._served.append(now)
        return None

    def _answer_salesbot(self, request: _Request) -> tuple[_Answer, bool]:
        knobs = self._knobs
        if knobs.fails:
            status, retry_after = knobs.fails.popleft()
            answer = _problem(status, "Error", "Injected failure")
            if retry_after is not None:
                answer = replace(answer, headers=(("Retry-After", retry_after),))
            return answer, False
        if request.token != self._access_token:
            return _json_answer(401, UNAUTHORIZED_BODY), False
        invalid = validate_tasks(request.json(), knobs.rejected_bots)
        if invalid is not None:
            return invalid, False
        if knobs.refusals:
            knobs.refusals -= 1
            return _json_answer(202, {**ACCEPTED_BODY, "success": False}, HAL_JSON), False
        if knobs.unreadable:
            knobs.unreadable -= 1
            return _Answer(202, b"<html>ok</html>", "text/html"), True
        if knobs.empty_body:
            return _Answer(202), True
        return _json_answer(202, ACCEPTED_BODY, HAL_JSON), True

    def _answer_oauth(self, body: Any) -> _Answer:
        if self._knobs.blocked:
            return _problem(403, "Forbidden", "Account is blocked")
        if not isinstance(body, dict):
            return _oauth_problem(400, "The request body must be a JSON object")
        client_id, client_secret, redirect_uri = self._client
        if body.get("client_id") != client_id or body.get("client_secret") != client_secret:
            return _oauth_problem(401, "Client authentication failed")
        if body.get("redirect_uri") != redirect_uri:
            return _oauth_problem(400, "The redirect URI does not match")
        grant = body.get("grant_type")
        if grant == "authorization_code":
            return self._grant_code(body.get("code"))
        if grant == "refresh_token":
            return self._grant_refresh(body.get("refresh_token"))
        return _oauth_problem(400, "The authorization grant type is not supported")

    def _grant_code(self, code: Any) -> _Answer:
        if code is None or code != self._auth_code:
            return _oauth_problem(400, "Authorization code has expired or was already used")
        self._auth_code = None  # an authorization code is single-use
        return self._issue_tokens()

    def _grant_refresh(self, token: Any) -> _Answer:
        if token != self._refresh_token:
            return _oauth_problem(400, "Token has been revoked")
        return self._issue_tokens()  # replaces, and so revokes, the old refresh token

    def _issue_tokens(self) -> _Answer:
        self._access_token = f"fake-access-{secrets.token_hex(8)}"
        self._refresh_token = f"fake-refresh-{secrets.token_hex(8)}"
        document = {
            "token_type": "Bearer",
            "expires_in": self._expires_in,
            "server_time": int(time.time()),
            "access_token": self._access_token,
            "refresh_token": self._refresh_token,
        }
        return _json_answer(200, document, "application/json")

    def _answer_webhooks(self, request: _Request) -> _Answer:
        """`/api/v4/webhooks` (protocol §1.5): admin only, problem+json errors."""
        if self._knobs.blocked:
            return _problem(403, "Forbidden", "Account is blocked")
        if request.token != self._access_token:
            return _json_answer(401, UNAUTHORIZED_BODY)
        if self._knobs.webhooks_forbidden:
            return _problem(403, "Forbidden", "Access denied")
        if self._knobs.webhooks_problem is not None:
            status, detail = self._knobs.webhooks_problem
            return _problem(status, "Bad Request", detail)
        if request.method == "GET":
            return self._list_webhooks(parse_qs(request.query).get("filter[destination]"))
        body = request.json()
        if not isinstance(body, dict):
            return _validation_failure([{"errors": [_invalid("", "Expected an object.")]}])
        if request.method == "POST":
            return self._post_webhook(body)
        if request.method == "DELETE":
            return self._delete_webhook(body.get("destination"))
        return _problem(405, "Method Not Allowed", "Use GET, POST or DELETE")

    def _list_webhooks(self, destinations: list[str] | None) -> _Answer:
        """Every webhook, or those whose destination equals the filter; 204 when none."""
        found = [w for d, w in self._webhooks.items() if destinations is None or d in destinations]
        if not found:
            return _Answer(204)
        document = {"_total_items": len(found), "_embedded": {"webhooks": found}}
        return _json_answer(200, document, HAL_JSON)

    def _post_webhook(self, body: dict[str, Any]) -> _Answer:
        """Subscribe, or replace the settings of a known destination; `disabled` stays."""
        destination, settings, sort = (body.get(key) for key in ("destination", "settings", "sort"))
        errors = _webhook_errors(destination, settings, sort)
        if errors:
            return _validation_failure([{"request_id": "0", "errors": errors}])
        self._save_webhook(str(destination), list(cast(list[str], settings)), sort)
        return _json_answer(200, self._webhooks[str(destination)], HAL_JSON)

    def _save_webhook(self, destination: str, settings: list[str], sort: int | None) -> None:
        now = int(time.time())
        known = self._webhooks.get(destination)
        self._webhooks[destination] = {
            "id": known["id"] if known else max(self._webhook_ids(), default=0) + 1,
            "destination": destination,
            "created_at": known["created_at"] if known else now,
            "updated_at": now,
            "account_id": ACCOUNT_ID,
            "created_by": ADMIN_USER_ID,
            "sort": sort if sort is not None else (known["sort"] if known else 1),
            "disabled": known["disabled"] if known else False,
            "settings": list(settings),
        }

    def _webhook_ids(self) -> list[int]:
        return [webhook["id"] for webhook in self._webhooks.values()]

    def _delete_webhook(self, destination: Any) -> _Answer:
        if not isinstance(destination, str) or self._webhooks.pop(destination, None) is None:
            return _problem(404, "Not Found", "Webhook not found")
        return _Answer(204)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; headers and body leave in one segment."""

    protocol_version = "HTTP/1.1"
    wbufsize = -1  # buffered: the whole answer is flushed once, after the handler
    disable_nagle_algorithm = True
    server_version = "nginx"
    sys_version = ""
    arrived = 0.0

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: no stderr noise, and no reverse DNS lookups."""

    def parse_request(self) -> bool:
        self.arrived = time.monotonic()  # the request line has just been read
        return super().parse_request()

    def _serve(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None and self.command == "POST":
            self._write(_problem(411, "Length Required", "Send Content-Length"))
            return
        raw_body = self.rfile.read(int(length or 0))
        request = _Request(
            method=self.command,
            path=self.path.split("?", 1)[0],
            headers=dict(self.headers.items()),
            raw_body=raw_body,
            client_port=int(self.client_address[1]),
            query=self.path.partition("?")[2],
            arrived=self.arrived,
        )
        fake = cast(_Server, self.server).fake
        plan = fake._plan(request)
        if plan.stall:
            fake._stopping.wait(plan.stall)
            self.close_connection = True
        if plan.answer is None:
            self._drop(plan.reset)
        else:
            self._write(plan.answer, truncate=plan.truncate)

    def _write(self, answer: _Answer, truncate: bool = False) -> None:
        try:
            self.send_response(answer.status)
            if answer.content_type:
                self.send_header("Content-Type", answer.content_type)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            # A truncated answer promises the whole body, sends half, then closes.
            self.wfile.write(answer.body[: len(answer.body) // 2] if truncate else answer.body)
            self.wfile.flush()
            self.close_connection = self.close_connection or truncate
        except OSError:  # the client gave up (stalled answer): nothing to tell it
            self.close_connection = True

    def _drop(self, reset: bool) -> None:
        self.close_connection = True
        if reset:
            cast(_Server, self.server).reset_on_close(self.connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, fake: FakeAmoCRM, port: int = 0) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(): a reverse DNS lookup, skipped.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._sockets_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def reset_on_close(self, sock: socket.socket) -> None:
        """Close `sock` with RST (SO_LINGER 0) and skip the FIN of a graceful shutdown."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._sockets_lock:
            self._resets.add(sock)

    def shutdown_request(self, request: Any) -> None:
        with self._sockets_lock:
            self._open.discard(request)
            reset = request in self._resets
            self._resets.discard(request)
        if reset:
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle kept-alive connections."""
        with self._sockets_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections the client tore down are normal here; anything else is a bug."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


__all__ = ["FakeAmoCRM", "RecordedCall", "max_in_window", "validate_tasks"]
