"""The web console at `/ui/`: the launch log, deliveries and rules as pages.

Server-rendered Jinja templates, one vendored htmx file for live refresh and
in-place actions, no build step and nothing from a CDN; every page reads without
JavaScript. It exists only when ADMIN_TOKEN is set (else `/ui/` is the same 404 as
any unknown URL); then `/` redirects here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, redirect, render_template, session, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from automation.config import Settings
from automation.web.console import auth, present
from automation.web.runtime import runtime

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
#: The vendored htmx file (npm `htmx.org` 2.0.11, its 0BSD licence beside it).
HTMX = "htmx-2.0.11.min.js"
#: Content-Security-Policy of every page: scripts and styles only from here, no eval
#: (htmx's `allowEval` is off), no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def init_app(app: Flask, settings: Settings) -> None:
    """Register the console, or nothing at all when ADMIN_TOKEN is not set."""
    if settings.admin_token is None:
        return
    from automation.web.console import (  # noqa: F401  (their routes)
        actions,
        deliveries,
        pages,
        rules_page,
    )

    auth.configure(app, settings)
    app.register_blueprint(bp)
    app.add_url_rule("/", "root", lambda: redirect(url_for("console.overview")))


def lifetime() -> timedelta:
    return timedelta(hours=runtime().settings.console_session_hours)


@bp.before_request
def _guard() -> BaseResponse | None:
    """Login first (except the login page and static files), then the POST checks."""
    auth.check_post()
    return auth.require_login(lifetime())


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.errorhandler(CSRFError)
def _csrf_refused(exc: CSRFError) -> tuple[str, int]:
    """A POST without this session's form token: refused like a cross-site one."""
    message = f"{exc.description} Reload the page and try again."
    return render_template("error.html", code=403, message=message), 403


@bp.errorhandler(HTTPException)
def _error(exc: HTTPException) -> tuple[str, int]:
    """Errors as a page people can read (the JSON error is for the API)."""
    code = exc.code or 500
    return render_template("error.html", code=code, message=exc.description or exc.name), code


@bp.app_template_global()
def when(moment: datetime | None) -> Any:
    return present.time_tag(moment, runtime().settings.display_timezone)


@bp.app_template_global()
def entity(entity_type: int, entity_id: int) -> Any:
    return present.entity_link(entity_type, entity_id, card_base_url())


@bp.app_template_global()
def named_entity(kind: str, entity_id: int) -> Any:
    """An entity as deliveries name it (`lead`, …, `chat_contact`), card-linked."""
    return present.kind_link(kind, entity_id, card_base_url())


@bp.context_processor
def _context() -> dict[str, Any]:
    return {
        "role": session.get("role"),
        "zone": runtime().settings.display_timezone,
        "now": datetime.now(UTC),
        "htmx": HTMX,
        "count": present.count,
        "entity_name": present.entity_name,
        "sparkline": present.sparkline,
        "hours": present.hours,
        "launch_search": present.launch_search,
    }


def card_base_url() -> str | None:
    """`https://<subdomain>.<domain>` when the account's subdomain is configured."""
    settings = runtime().settings
    if settings.amocrm_subdomain is None:
        return None
    return f"https://{settings.amocrm_subdomain}.{settings.amocrm_domain}"
