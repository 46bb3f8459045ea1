"""`GET /healthz`: is this server able to accept and store webhooks right now, and is
what it stores going out?

Three answers. `unhealthy` (503): webhooks are not being stored (database down or
behind, no rules, no WEBHOOK_SECRET). `degraded` (200: webhooks are still stored, a
load balancer must keep sending them): launches are not going out as they should,
because sending is on hold, the recent amoCRM calls failed, no dispatcher is alive
while launches are due, or the rules file on disk is broken (the last good rules still
run). `ok` otherwise. `reasons` says why in words; the parts say it in fields.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError

from automation.amocrm.answers import Outcome
from automation.store import budget, dispatchers, vitals
from automation.store.database import current_revision
from automation.web.runtime import Runtime, runtime

bp = Blueprint("health", __name__)

#: Call outcomes that say amoCRM, or the way to it, is failing: 5xx, no answer (read
#: timeout, connection reset), not sent (refused, DNS, connect timeout, no token),
#: 401/403, and answers that are not the salesbot API's (a proxy's 404). A 429 is our
#: pacing meeting amoCRM's limit (its hold shows on its own); a 400 blames launches.
FAILURES = frozenset(
    {
        Outcome.SERVER_ERROR,
        Outcome.UNCERTAIN,
        Outcome.NOT_SENT,
        Outcome.UNAUTHORIZED,
        Outcome.FORBIDDEN,
        Outcome.OTHER,
    }
)
#: How far back `/healthz` looks at amoCRM calls.
CALL_WINDOW = timedelta(minutes=5)
#: A large webhook that no dispatcher has taken for this long, or whose expansion has
#: stored no chunk for this long, is not being expanded: degraded. Not its whole time
#: in the queue: a big body on PostgreSQL may take minutes while it makes progress.
QUEUED_TOO_LONG = timedelta(minutes=2)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 `ok`, 200 `degraded` or 503 `unhealthy`, with the reasons and the facts."""
    state = runtime()
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "database": _database(state),
        "rules": _rules(state),
        "webhook": _webhook(state),
    }
    reachable = bool(body["database"]["reachable"])
    body["dispatch"] = _dispatch(state, now) if reachable else {}
    body["amocrm"] = _amocrm(state, now) if reachable else {}
    unhealthy = _unhealthy(body, state)
    degraded = [] if unhealthy else _degraded(body, state, now)
    body["status"] = "unhealthy" if unhealthy else "degraded" if degraded else "ok"
    body["reasons"] = unhealthy or degraded
    return jsonify(body), 503 if unhealthy else 200


# ------------------------------------------------------------------------- the facts


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


def _dispatch(state: Runtime, now: datetime) -> dict[str, Any]:
    """The shared hold (a 429 back-off, a 403, no token), the dispatchers alive, and
    what is due. The hold is the budget row's: every hold a dispatcher puts on all the
    others (a run of 5xx too) is read through `budget.current_hold`."""
    dead_after = timedelta(seconds=state.settings.dispatcher_dead_after)
    try:
        with state.sessions() as session:
            hold = budget.current_hold(session, now)
            facts = vitals.read_vitals(session, now)
            live = dispatchers.live_ids(session, now, dead_after)
    except SQLAlchemyError as exc:
        return {"error": type(exc).__name__}
    return {
        "dry_run": state.settings.is_dry_run,
        "live_dispatchers": len(live),
        "last_heartbeat_at": _iso(facts.last_heartbeat),
        "due_launches": facts.due,
        "oldest_due_at": _iso(facts.oldest_due),
        "queued_deliveries": facts.queued,
        "oldest_queued_at": _iso(facts.oldest_queued),
        "queued_unclaimed_since": _iso(facts.unclaimed_since),
        "queued_progress_at": _iso(facts.stalled_since),
        "queued_too_long": _too_long(facts.unclaimed_since, now)
        or _too_long(facts.stalled_since, now),
        "paused_until": _iso(hold.hold_until) if hold else None,
        "pause_reason": hold.hold_reason if hold else None,
    }


def _too_long(since: datetime | None, now: datetime) -> bool:
    return since is not None and now - since > QUEUED_TOO_LONG


def _amocrm(state: Runtime, now: datetime) -> dict[str, Any]:
    """How the amoCRM calls of the last CALL_WINDOW went, and the newest call."""
    try:
        with state.sessions() as session:
            tally = vitals.call_tally(session, now - CALL_WINDOW, FAILURES)
    except SQLAlchemyError as exc:
        return {"error": type(exc).__name__}
    last = tally.last
    return {
        "window_seconds": int(CALL_WINDOW.total_seconds()),
        "calls": tally.calls,
        "failed": tally.failed,
        "last_call": None
        if last is None
        else {
            "started_at": _iso(last.started_at),
            "outcome": last.outcome,
            "status_code": last.status_code,
            "error": last.error,
        },
    }


def _rules(state: Runtime) -> dict[str, Any]:
    loader = state.rules
    rules = loader.maybe_reload()
    # From memory only: the version is recorded at load, and a health check writes nothing.
    version = state.versions.get(rules.content_hash) if rules is not None else None
    return {
        "file": str(loader.path),
        "loaded": rules is not None,
        "loaded_at": _iso(loader.loaded_at),
        "rule_count": len(rules.rules) if rules is not None else 0,
        "content_hash": rules.content_hash if rules is not None else None,
        "version_id": version.id if version is not None else None,
        "version_first_loaded_at": _iso(version.first_loaded_at) if version else None,
        "last_error": loader.error,
    }


# ----------------------------------------------------------------------- the verdict


def _unhealthy(body: dict[str, Any], state: Runtime) -> list[str]:
    """Why webhooks are not being stored (empty: they are)."""
    database, rules, webhook = body["database"], body["rules"], body["webhook"]
    reasons = []
    if not database["reachable"]:
        reasons.append(f"the database does not answer ({database['error']})")
    elif not database["schema_current"]:
        reasons.append(
            f"the database schema is at revision {database['schema_revision']}, this code "
            f"needs {state.schema_revision}: run `automation db upgrade` with this code"
        )
    if not rules["loaded"]:
        reasons.append(f"no rules loaded: {rules['last_error']}")
    if not webhook["configured"]:
        reasons.append(webhook["error"])
    return reasons


def _degraded(body: dict[str, Any], state: Runtime, now: datetime) -> list[str]:
    """Why launches are not going out as they should, while webhooks are stored."""
    dispatch, amocrm, rules = body["dispatch"], body["amocrm"], body["rules"]
    reasons = []
    if dispatch.get("paused_until"):
        reasons.append(f"sending is on hold until {dispatch['paused_until']}: {_pause(dispatch)}")
    if _calls_failing(amocrm):
        reasons.append(_calls_reason(amocrm))
    if dispatch.get("due_launches") and not dispatch.get("live_dispatchers"):
        reasons.append(_no_dispatcher_reason(dispatch, state.settings.dispatcher_dead_after))
    if dispatch.get("queued_too_long"):
        reasons += _queued_reasons(dispatch, now)
    if rules["last_error"]:
        reasons.append(
            f"the rules file is broken; the last good rules (loaded {rules['loaded_at']}) "
            f"still run: {rules['last_error']}"
        )
    for part in ("dispatch", "amocrm"):
        if "error" in body[part]:
            reasons.append(f"{part} facts could not be read ({body[part]['error']})")
    return reasons


def _calls_failing(amocrm: dict[str, Any]) -> bool:
    """At least half of the window's calls failed, the newest one too: a blip among
    many good calls, or an outage that has just ended, is not a failing amoCRM."""
    failed, last = amocrm.get("failed", 0), amocrm.get("last_call")
    return bool(failed and 2 * failed >= amocrm["calls"] and last and last["outcome"] in FAILURES)


def _calls_reason(amocrm: dict[str, Any]) -> str:
    last = amocrm["last_call"]
    answer = f"HTTP {last['status_code']}" if last["status_code"] else "no HTTP answer"
    minutes = amocrm["window_seconds"] // 60
    return (
        f"amoCRM calls are failing: {amocrm['failed']} of {amocrm['calls']} calls in the "
        f"last {minutes} minutes failed; the last one, at {last['started_at']}: "
        f"{last['outcome']} ({answer})"
    )


def _no_dispatcher_reason(dispatch: dict[str, Any], dead_after: float) -> str:
    last = dispatch["last_heartbeat_at"] or "never"
    return (
        f"{dispatch['due_launches']} launch(es) due (the oldest since "
        f"{dispatch['oldest_due_at']}) and no dispatcher has a heartbeat in the last "
        f"{dead_after:g}s (last: {last}): start `automation dispatch` or `automation serve`"
    )


def _queued_reasons(dispatch: dict[str, Any], now: datetime) -> list[str]:
    """Which it is: a large webhook no dispatcher takes, or one whose expansion stalled."""
    minutes = f"{QUEUED_TOO_LONG.total_seconds() / 60:g} minutes"
    reasons = []
    unclaimed, progress = dispatch["queued_unclaimed_since"], dispatch["queued_progress_at"]
    if unclaimed and _too_long(datetime.fromisoformat(unclaimed), now):
        reasons.append(
            f"a large webhook has been queued and not taken by any dispatcher for more than "
            f"{minutes} (waiting since {unclaimed}; {dispatch['queued_deliveries']} queued in "
            "all): start `automation dispatch` or `automation serve`; see "
            "`automation deliveries list --status queued`"
        )
    if progress and _too_long(datetime.fromisoformat(progress), now):
        reasons.append(
            f"a large webhook's expansion has made no progress for more than {minutes} "
            f"(its last chunk stored at {progress}): its dispatcher died or stalled, and "
            "another takes it over after DISPATCHER_DEAD_AFTER; see "
            "`automation deliveries list --status queued`"
        )
    return reasons


def _pause(dispatch: dict[str, Any]) -> str:
    return str(dispatch.get("pause_reason") or "no reason recorded")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
