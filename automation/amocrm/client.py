"""The amoCRM HTTP client: one pooled session, bearer auth, every answer classified.

The dispatcher owns pacing and retries; this module owns the wire. A salesbot call
sends one request, never retries and never raises for a network or HTTP outcome: it
returns a `CallResult` whose `Outcome` tells the dispatcher what amoCRM did, and above
all whether the request certainly did not reach amoCRM (`NOT_SENT`: safe to resend) or
may have (`UNCERTAIN`: resending could start a bot twice for the same customer).

What an answer means is decided in `answers`, which holds no I/O; what a transport
exception means (it needs requests' and urllib3's classes) in `transport`; what the
token and webhooks endpoints answered, as our types and errors, in `replies`. What
stays here is sending, timing and logging.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import logging
import os
import re
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import requests
import requests.auth
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from automation import metrics
from automation.amocrm.answers import (
    CallResult,
    Outcome,
    SalesbotTask,
    TokenSet,
)
from automation.amocrm.replies import (
    WEBHOOKS_PATH,
    embedded_webhooks,
    parse_tokens,
    refused_error,
    unreachable_error,
    webhooks_answer,
)
from automation.amocrm.transport import (
    Clock,
    answered_call,
    failed_call,
    unsendable_token,
)
from automation.config import Settings
from automation.errors import ConfigError, WebhooksApiError

logger = logging.getLogger("automation.amocrm")

SALESBOT_RUN_PATH = "/api/v2/salesbot/run"
OAUTH_TOKEN_PATH = "/oauth2/access_token"
#: amoCRM refuses a salesbot call with more tasks than this.
MAX_TASKS_PER_CALL = 100
DEFAULT_CONNECT_TIMEOUT = 3.05
DEFAULT_READ_TIMEOUT = 10.0
_USER_AGENT = "amocrm-automation/0.1"

TokenProvider = Callable[[], str]
#: A token must be visible ASCII to go in a header (RFC 6750 `b64token` is narrower).
_SENDABLE_TOKEN = re.compile(r"[\x21-\x7e]*")


class _BearerAuth(requests.auth.AuthBase):
    """Sets the Bearer header per request (an explicit auth also stops .netrc lookups)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class AmoCRMClient:
    """A client for one amoCRM account at `base_url` (e.g. `Settings.amocrm_url`).

    `token_provider` is called before every salesbot call, so a token refreshed by
    another process (stored in the database) is picked up without rebuilding the
    client. Threads may share one client: nothing in its session changes per call (no
    cookies, no redirects); size `pool_size` to their number so none waits for a
    connection.
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        pool_size: int = 10,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token_provider = token_provider
        self._timeout = (connect_timeout, read_timeout)
        self._session = _make_session(pool_size, self.base_url)

    @classmethod
    def for_settings(
        cls, settings: Settings, token_provider: TokenProvider, read_timeout: float | None = None
    ) -> AmoCRMClient:
        """A client on the settings' account with AMOCRM_TIMEOUT's (connect, read)
        seconds; `read_timeout` overrides the read part (tests make timeouts quick)."""
        if settings.amocrm_url is None:
            raise ConfigError("calling amoCRM needs AMOCRM_SUBDOMAIN or AMOCRM_BASE_URL")
        connect, read = settings.amocrm_timeout
        return cls(
            settings.amocrm_url,
            token_provider,
            connect_timeout=connect,
            read_timeout=read if read_timeout is None else read_timeout,
        )

    def __enter__(self) -> AmoCRMClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def run_salesbots(self, tasks: Sequence[SalesbotTask]) -> CallResult:
        """POST `tasks` to `/api/v2/salesbot/run` once and classify the answer.

        Never raises for what the network or amoCRM does; raises `ValueError` for a
        batch that is empty or larger than `MAX_TASKS_PER_CALL` (a caller bug), and
        lets an exception from the token provider through.
        """
        _check_batch(tasks)
        result = self._send_tasks(tasks, self._token_provider())
        _log_call(
            SALESBOT_RUN_PATH,
            f"tasks={len(tasks)}",
            result.status_code,
            result.outcome.value,
            result.duration_ms,
            result.error or "",
        )
        return result

    def _send_tasks(self, tasks: Sequence[SalesbotTask], token: str) -> CallResult:
        clock = Clock()
        if not _SENDABLE_TOKEN.fullmatch(token):
            return unsendable_token(clock)
        try:
            response = self._session.post(
                self.base_url + SALESBOT_RUN_PATH,
                json=[task.as_json() for task in tasks],
                auth=_BearerAuth(token),
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return failed_call(exc, clock, secrets=(token,))
        return answered_call(response, len(tasks), clock)

    def exchange_code(
        self, client_id: str, client_secret: str, code: str, redirect_uri: str
    ) -> TokenSet:
        """Trade an authorization code (valid ~20 minutes, single-use) for tokens.

        Raises `AmoAuthError` with amoCRM's title and detail when refused or unreachable.
        """
        body = {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
        }
        return self._request_tokens(body, secrets=(client_secret, code))

    def refresh_tokens(
        self, client_id: str, client_secret: str, refresh_token: str, redirect_uri: str
    ) -> TokenSet:
        """Trade a refresh token for a new pair; the old refresh token is then spent.

        Raises `AmoAuthError` when refused or unreachable. After an answer lost in
        transit the old token may already be spent: say so, and let the operator know
        that a failing next refresh means authorizing again.
        """
        body = {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "redirect_uri": redirect_uri,
        }
        return self._request_tokens(body, secrets=(client_secret, refresh_token))

    def _request_tokens(self, body: dict[str, str], secrets: Sequence[str]) -> TokenSet:
        grant = body["grant_type"]
        clock = Clock()
        try:
            response = self._session.post(
                self.base_url + OAUTH_TOKEN_PATH,
                json=body,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            result = failed_call(exc, clock, secrets=secrets)
            facts, outcome = f"grant_type={grant}", result.outcome.value
            _log_call(
                OAUTH_TOKEN_PATH, facts, None, outcome, result.duration_ms, result.error or ""
            )
            raise unreachable_error(grant, result) from exc
        status, (_, duration_ms) = response.status_code, clock.stop()
        outcome = "ok" if status == 200 else "refused"
        _log_call(OAUTH_TOKEN_PATH, f"grant_type={grant}", status, outcome, duration_ms)
        if status != 200:
            raise refused_error(grant, response, secrets)
        return parse_tokens(response)

    # --- webhook subscriptions (`/api/v4/webhooks`) -----------------------------------

    def list_webhooks(self, destination: str | None = None) -> list[dict[str, Any]]:
        """`GET /api/v4/webhooks`: the account's webhooks, only `destination`'s if given.

        Needs an account administrator's token. A 204 (no webhooks) is an empty list.
        Raises `WebhooksApiError` for any other answer, or none; never quotes the token.
        """
        params = {"filter[destination]": destination} if destination else None
        return embedded_webhooks(self._call_webhooks("GET", params=params))

    def subscribe_webhook(
        self, destination: str, settings: Sequence[str], sort: int | None = None
    ) -> dict[str, Any]:
        """`POST /api/v4/webhooks`: subscribe `destination` to exactly `settings`.

        amoCRM replaces the settings of a destination it already knows; the answer is
        its webhook model. Raises `WebhooksApiError` when refused or unanswered.
        """
        body: dict[str, Any] = {"destination": destination, "settings": list(settings)}
        if sort is not None:
            body["sort"] = sort
        document = self._call_webhooks("POST", body=body)
        return document if isinstance(document, dict) else {}

    def unsubscribe_webhook(self, destination: str) -> None:
        """`DELETE /api/v4/webhooks`: amoCRM stops sending anything to `destination`."""
        self._call_webhooks("DELETE", body={"destination": destination})

    def _call_webhooks(
        self, method: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        """One logged call; its JSON answer, or None for an empty 2xx.

        Unlike a salesbot call, every outcome but success raises: these calls are made
        by an operator at a terminal, who needs the reason, not a classification. The
        destination holds the webhook secret, so it is masked in errors too.
        """
        token = self._token_provider()
        if not _SENDABLE_TOKEN.fullmatch(token):
            raise WebhooksApiError("the token provider returned a token with spaces or non-ASCII")
        secrets = [token, urlencode(params or {}), *(params or {}).values()]
        secrets += [value for value in (body or {}).values() if isinstance(value, str)]
        clock = Clock()
        try:
            response = self._session.request(
                method,
                self.base_url + WEBHOOKS_PATH,
                params=params,
                json=body,
                auth=_BearerAuth(token),
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            result = failed_call(exc, clock, secrets=secrets)
            _log_webhooks_call(method, None, result.duration_ms, result.error or "")
            where = f"{method} {WEBHOOKS_PATH} at {self.base_url}"
            raise WebhooksApiError(f"{where}: no answer from amoCRM: {result.error}") from exc
        _log_webhooks_call(method, response.status_code, clock.stop()[1])
        return webhooks_answer(method, response, secrets)


def _make_session(pool_size: int, base_url: str) -> requests.Session:
    """A session with one connection pool, no retries, no redirects and no cookies.

    Retries belong to the dispatcher (urllib3 would resend a POST after a reset, the
    double launch we must avoid); cookies would make calls depend on each other. The
    environment (proxies, NO_PROXY, a CA bundle) is read here, once, as requests would
    read it for `base_url`: with `trust_env` requests reads it again on every call, a
    sixth of a salesbot call's CPU in the drain benchmark.
    """
    adapter = HTTPAdapter(
        pool_connections=1,
        pool_maxsize=pool_size,
        max_retries=Retry(total=0, read=False, redirect=False),
    )
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = _USER_AGENT
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    return session


def _check_batch(tasks: Sequence[SalesbotTask]) -> None:
    if not tasks:
        raise ValueError("run_salesbots: expected at least one task, got none")
    if len(tasks) > MAX_TASKS_PER_CALL:
        raise ValueError(
            f"run_salesbots: expected at most {MAX_TASKS_PER_CALL} tasks, got {len(tasks)}"
        )


# --- logging -----------------------------------------------------------------------


def _log_call(
    path: str, facts: str, status: int | None, outcome: str, duration_ms: float, error: str = ""
) -> None:
    """One line per call, `key=value` after method and path; never a token or a secret."""
    level = logging.INFO if outcome in (Outcome.ACCEPTED.value, "ok") else logging.WARNING
    logger.log(
        level,
        "POST %s %s status=%s outcome=%s duration_ms=%.1f%s",
        path,
        facts,
        status if status is not None else "-",
        outcome,
        duration_ms,
        f" error={error!r}" if error else "",
        extra={"path": path, "status": status, "outcome": outcome, "duration_ms": duration_ms},
    )
    metrics.amocrm_call(path, status, outcome, duration_ms)


def _log_webhooks_call(
    method: str, status: int | None, duration_ms: float, error: str = ""
) -> None:
    """One line per call, at INFO even when it failed: the caller raises, and an operator
    sees the error once. The destination is not logged: it carries the webhook secret."""
    logger.info(
        "%s %s status=%s duration_ms=%.1f%s",
        method,
        WEBHOOKS_PATH,
        status if status is not None else "-",
        duration_ms,
        f" error={error!r}" if error else "",
        extra={"path": WEBHOOKS_PATH, "status": status, "duration_ms": duration_ms},
    )
