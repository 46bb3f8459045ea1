"""`GET /healthz`: is this server able to accept and store webhooks right now?"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError

from automation.store import budget, dispatchers, vitals
from automation.store.database import current_revision
from automation.web.runtime import Runtime, runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when the database answers at the code's schema, rules are loaded and
    WEBHOOK_SECRET is set; else 503.

    A broken rules file that replaced nothing (the last good rules still run) shows
    its error here but does not make the server unhealthy. Without WEBHOOK_SECRET every
    webhook gets 503, so the server is not healthy whatever else works.
    """
    state = runtime()
    database = _database(state)
    rules = _rules(state)
    webhook = _webhook(state)
    dispatch = _dispatch(state) if database["reachable"] else {}
    healthy = (
        bool(database["reachable"])
        and database["schema_current"]
        and rules["loaded"]
        and webhook["configured"]
    )
    status = "ok" if healthy else "unhealthy"
    if healthy and dispatch.get("paused_until"):
        status = "degraded"  # webhooks are still stored; nothing goes out for now
    body = {
        "status": status,
        "database": database,
        "rules": rules,
        "webhook": webhook,
        "dispatch": dispatch,
    }
    return jsonify(body), 200 if healthy else 503


def _webhook(state: Runtime) -> dict[str, Any]:
    if state.settings.webhook_secret is None:
        return {"configured": False, "error": "WEBHOOK_SECRET is not set: every webhook gets 503"}
    return {"configured": True}


def _database(state: Runtime) -> dict[str, Any]:
    try:
        revision = current_revision(state.engine)
        with state.sessions() as session:
            last = vitals.last_webhook_at(session)
    except SQLAlchemyError as exc:
        return {"reachable": False, "error": type(exc).__name__, "schema_current": False}
    return {
        "reachable": True,
        "schema_revision": revision,
        "schema_current": revision == state.schema_revision,
        "last_webhook_at": _iso(last),
    }


def _dispatch(state: Runtime) -> dict[str, Any]:
    """The shared pause (after a 403 or a lost token) and the last heartbeat."""
    now = datetime.now(UTC)
    try:
        with state.sessions() as session:
            hold = budget.current_hold(session, now)
            beat = dispatchers.last_heartbeat(session)
    except SQLAlchemyError as exc:
        return {"error": type(exc).__name__}
    return {
        "dry_run": state.settings.is_dry_run,
        "last_heartbeat_at": _iso(beat),
        "paused_until": _iso(hold.hold_until) if hold else None,
        "pause_reason": hold.hold_reason if hold else None,
    }


def _rules(state: Runtime) -> dict[str, Any]:
    loader = state.rules
    rules = loader.maybe_reload()
    return {
        "file": str(loader.path),
        "loaded": rules is not None,
        "loaded_at": _iso(loader.loaded_at),
        "rule_count": len(rules.rules) if rules is not None else 0,
        "content_hash": rules.content_hash if rules is not None else None,
        "last_error": loader.error,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
