"""Who may use the console: login with a token, a signed session cookie, CSRF checks.

`ADMIN_TOKEN` may act, `VIEWER_TOKEN` may only read. The session is Flask's signed
cookie (HttpOnly, SameSite=Strict, Secure over HTTPS or when CONSOLE_SECURE_COOKIE
says so), signed with a key derived from both tokens: changing either logs everyone
out. Every POST needs the per-session CSRF token (Flask-WTF) and must not come from
another site (`Origin`, `Sec-Fetch-Site`); a refused POST changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Request, abort, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response as BaseResponse

from automation.config import Settings

logger = logging.getLogger("automation.console")
csrf = CSRFProtect()

#: Seconds a failed login waits before its answer: guessing gets slow.
FAILED_LOGIN_DELAY = 1.0
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


def failed_login(app: Flask) -> None:
    """Log the attempt (never the token) and make the guesser wait."""
    logger.warning("console login refused: wrong token from %s", request.remote_addr)
    time.sleep(float(app.config["CONSOLE_FAILED_LOGIN_DELAY"]))


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
