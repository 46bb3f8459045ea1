"""Who may use the console: login with a token, a signed session cookie, CSRF checks.

`ADMIN_TOKEN` may act, `VIEWER_TOKEN` may only read. The session is Flask's signed
cookie (HttpOnly, SameSite=Strict, Secure over HTTPS or when CONSOLE_SECURE_COOKIE
says so), signed with a key derived from both tokens: changing either logs everyone
out. Every POST needs the per-session CSRF token (Flask-WTF) and must not come from
another site (`Origin`, `Sec-Fetch-Site`); a refused POST changes nothing.

A refused login is logged (never the token) and answered after a pause; after
LOCKOUT_FAILURES of them from one client address within LOCKOUT_WINDOW, that address
gets 429 with Retry-After, even with the right token, until the window has passed
(`store.logins`, counted in the database for every worker and restart).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Request, abort, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response as BaseResponse

from automation.config import Settings
from automation.store import logins

logger = logging.getLogger("automation.console")
csrf = CSRFProtect()

#: Seconds a failed login waits before its answer: guessing gets slow.
FAILED_LOGIN_DELAY = 1.0
#: Refused logins from one client address within LOCKOUT_WINDOW that lock it out
#: (429) until the oldest of them is LOCKOUT_WINDOW old.
LOCKOUT_FAILURES = 10
LOCKOUT_WINDOW = timedelta(minutes=15)
#: Endpoints open without a login.
PUBLIC = frozenset({"console.login", "console.static"})
F = TypeVar("F", bound=Callable[..., Any])


class Role(StrEnum):
    """What a logged-in person may do."""

    #: Logged in with ADMIN_TOKEN: reads and acts.
    ADMIN = "admin"
    #: Logged in with VIEWER_TOKEN: reads only.
    VIEWER = "viewer"


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, `Secure` whenever the request itself came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or _is_https(request)


def _is_https(req: Request) -> bool:
    return req.is_secure


def configure(app: Flask, settings: Settings) -> None:
    """Session and CSRF settings for the console; called only when it is enabled."""
    app.secret_key = session_key(settings)
    app.session_interface = _SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="automation_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.console_secure_cookie,
        SESSION_COOKIE_PATH="/ui",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.console_session_hours),
        # Checked only where the console asks (`check_post`): the webhook endpoint
        # is posted to by amoCRM, which has no form token.
        WTF_CSRF_CHECK_DEFAULT=False,
        # The token lives as long as the session; a page open for an hour still works.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.config.setdefault("CONSOLE_FAILED_LOGIN_DELAY", FAILED_LOGIN_DELAY)
    csrf.init_app(app)


def session_key(settings: Settings) -> bytes:
    """The cookie-signing key: derived from both tokens, so it is as secret as they
    are, identical in every worker, and changes (logging everyone out) with either."""
    assert settings.admin_token is not None
    material = settings.admin_token.get_secret_value()
    if settings.viewer_token is not None:
        material += "\0" + settings.viewer_token.get_secret_value()
    return hashlib.sha256(b"automation console session\0" + material.encode()).digest()


def role_for(token: str, settings: Settings) -> Role | None:
    """The role a token grants, compared in constant time against both tokens."""
    given = token.encode()
    found = None
    for role, secret in ((Role.ADMIN, settings.admin_token), (Role.VIEWER, settings.viewer_token)):
        if secret is not None and hmac.compare_digest(given, secret.get_secret_value().encode()):
            found = role
    return found


def log_in(role: Role) -> None:
    """A fresh session (never one an attacker planted) for `role`."""
    session.clear()
    session.permanent = True
    session["role"] = role.value
    session["since"] = int(time.time())


@dataclass(frozen=True, slots=True)
class Attempt:
    """What came of one login attempt from one address."""

    #: The role the token grants; None when refused (wrong token, or locked out).
    role: Role | None
    #: Set when the address was locked out: when it may try again. The token was
    #: not even compared.
    locked_until: datetime | None = None
    #: A wrong token: the address's refused logins within the window, this one too.
    failures: int = 0


def attempt(
    sessions: sessionmaker[Session], settings: Settings, token: str, address: str, now: datetime
) -> Attempt:
    """Judge a login from `address`: locked out, or the token's role, the refusal
    counted. One short transaction holding the address (never the pause after it)."""
    with sessions.begin() as db:
        logins.hold(db, address)
        until = logins.locked_until(db, address, now, LOCKOUT_FAILURES, LOCKOUT_WINDOW)
        if until is not None:
            return Attempt(None, locked_until=until)
        role = role_for(token, settings)
        if role is not None:
            return Attempt(role)
        return Attempt(None, failures=logins.record_failure(db, address, now, LOCKOUT_WINDOW))


def client_address(req: Request, proxy_hops: int) -> str:
    """The address the lockout counts. Without proxies (`proxy_hops` 0) the peer of
    the connection; behind `proxy_hops` proxies that each append to X-Forwarded-For,
    the address the outermost one saw: that many entries from the right, the ones our
    own proxies wrote (anything left of them the client may have forged). A request
    with fewer entries than that did not come through them: its peer counts."""
    peer = req.remote_addr or "unknown"
    if proxy_hops == 0:
        return peer
    entries = [
        entry.strip()
        for header in req.headers.getlist("X-Forwarded-For")
        for entry in header.split(",")
        if entry.strip()
    ]
    return entries[-proxy_hops] if len(entries) >= proxy_hops else peer


def failed_login(app: Flask, address: str, failures: int) -> None:
    """Log the refusal (never the token) and make the guesser wait."""
    window = int(LOCKOUT_WINDOW.total_seconds() // 60)
    logger.warning(
        "console login refused: wrong token from %s (%d of %d allowed within %d min)",
        address,
        failures,
        LOCKOUT_FAILURES,
        window,
    )
    if failures >= LOCKOUT_FAILURES:
        logger.warning(
            "console login locked for %s: %d refused logins within %d min",
            address,
            failures,
            window,
        )
    time.sleep(float(app.config["CONSOLE_FAILED_LOGIN_DELAY"]))


def locked_out(address: str, until: datetime, now: datetime, settings: Settings) -> tuple[int, str]:
    """Log a locked-out attempt. The whole seconds until the address may try again
    (the Retry-After header), and the login page's message saying so."""
    from automation.web.console.present import exact

    seconds = max(1, math.ceil((until - now).total_seconds()))
    window = int(LOCKOUT_WINDOW.total_seconds() // 60)
    logger.warning(
        "console login refused: %s is locked out for %d s more (%d refused logins within %d min)",
        address,
        seconds,
        LOCKOUT_FAILURES,
        window,
    )
    message = (
        f"Too many failed logins from your address ({LOCKOUT_FAILURES} within {window} "
        f"minutes): logins from it are refused, even with the right token, for "
        f"{math.ceil(seconds / 60)} min more, until {exact(until, settings.display_timezone)}."
    )
    return seconds, message


def current_role(lifetime: timedelta) -> Role | None:
    """The logged-in role, or None (never logged in, or the login is older than
    `lifetime`: the cookie's own expiry is the browser's business, this one ours)."""
    role, since = session.get("role"), session.get("since")
    if role not in (Role.ADMIN, Role.VIEWER) or not isinstance(since, int):
        return None
    if time.time() - since > lifetime.total_seconds():
        session.clear()
        return None
    return Role(role)


def require_login(lifetime: timedelta) -> BaseResponse | None:
    """Before every console view: anonymous people go to the login page."""
    if request.endpoint in PUBLIC:
        return None
    if current_role(lifetime) is None:
        wanted = request.full_path if request.method == "GET" else url_for("console.overview")
        login = url_for("console.login", next=wanted.rstrip("?"))
        if request.headers.get("HX-Request") == "true":
            # A live refresh after the session ended: the whole page goes to the login
            # form, rather than the form being swapped into the refreshed table.
            return BaseResponse(status=204, headers={"HX-Redirect": login})
        return redirect(login)
    return None


def check_post() -> None:
    """Refuse (403) a POST from another site or without this session's CSRF token."""
    if request.method != "POST":
        return
    if not same_origin(request):
        logger.warning("console POST refused: cross-site request to %s", request.path)
        abort(403, "this form was posted from another site: refused")
    csrf.protect()


def same_origin(req: Request) -> bool:
    """`Sec-Fetch-Site` (modern browsers) and `Origin` must both name this site when
    present. Only the host is compared: behind a TLS proxy the scheme we see is http.
    """
    fetch_site = req.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = req.headers.get("Origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == req.host


def require_admin() -> None:
    """Actions are for ADMIN_TOKEN only: a viewer gets 403."""
    if session.get("role") != Role.ADMIN:
        abort(403, "read-only login: log in with ADMIN_TOKEN to act")


def safe_next(target: str | None) -> str:
    """Where to go after login: only a path inside the console, never another site."""
    if target and target.startswith("/ui") and not target.startswith("//"):
        return target
    return url_for("console.overview")
