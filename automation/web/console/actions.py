"""The console's actions: retry or cancel one launch, or every launch of a filter.

Only ADMIN_TOKEN sessions act. Each action goes through the launch log's guarded
transitions (a launch that changed status meanwhile is left alone) and is written to
the audit table in the transaction that made the change. Retrying an `uncertain`
launch first asks for a confirmation: amoCRM may have started that bot already.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from automation.errors import BadParameter
from automation.limits import MAX_ID
from automation.store import audit, browse, transitions
from automation.store.states import LaunchStatus
from automation.store.transitions import CANCEL, RETRY, Transition
from automation.web.console import auth, bp
from automation.web.console.query import View, parse_view
from automation.web.runtime import runtime

TRANSITIONS = {"retry": RETRY, "cancel": CANCEL}
#: Launches changed per transaction of a bulk action: short write locks, so webhooks
#: keep being stored while thousands of launches are retried.
CHUNK = 500


def _transition(action: str) -> Transition:
    transition = TRANSITIONS.get(action)
    if transition is None:
        abort(404, f"no action {action!r}: expected retry or cancel")
    return transition


@bp.post("/launches/<int:launch_id>/<action>")
def act(launch_id: int, action: str) -> BaseResponse | str:
    """Retry or cancel one launch; an uncertain one needs `confirm=yes` to be retried."""
    auth.require_admin()
    transition = _transition(action)
    if launch_id > MAX_ID:
        abort(404, f"no launch with id {launch_id}")
    sessions = runtime().sessions
    with sessions.begin() as db:
        plan = transitions.plan_by_ids(db, transition, [launch_id])
        if plan.refused:
            flash(plan.refused[0].removeprefix(f"launch #{launch_id}: "), "error")
        elif plan.uncertain and request.form.get("confirm") != "yes":
            return render_template("confirm_uncertain.html", row=plan.targets[0])
        else:
            now = datetime.now(UTC)
            changed, missed = transitions.apply_plan(db, plan, now)
            audit.record(
                db,
                at=now,
                actor=auth.Role.ADMIN.value,
                action=transition.verb,
                target=f"launch #{launch_id}",
                requested=1,
                changed=changed,
            )
            flash(missed[0] if missed else f"launch #{launch_id} {transition.done}", "notice")
    return redirect(url_for("console.launch", launch_id=launch_id))


@bp.get("/launches/bulk/<action>")
def bulk_preview(action: str) -> tuple[str, int] | str:
    """How many launches of this filter the action would change, counted now, before
    anything changes; the form carries the newest id so later arrivals are left out."""
    auth.require_admin()
    transition = _transition(action)
    view = _view()
    with runtime().sessions() as db:
        newest = browse.newest_id(db)  # first: what is counted next is at most this
        matched = browse.matching_count(db, view.where, transition.allowed)
        uncertain = 0
        if transition is RETRY:
            uncertain = browse.matching_count(db, view.where, [LaunchStatus.UNCERTAIN])
    return render_template(
        "bulk.html",
        transition=transition,
        view=view,
        matched=matched,
        limit=browse.BULK_LIMIT,
        uncertain=uncertain,
        up_to=newest,
    )


@bp.post("/launches/bulk/<action>")
def bulk_apply(action: str) -> BaseResponse:
    """Apply the action to what the preview counted: matching launches up to the
    newest id it saw, in short transactions, all under one audit entry."""
    auth.require_admin()
    transition = _transition(action)
    view = _view(request.form)
    up_to = _int_field("up_to")
    sessions = runtime().sessions
    with sessions() as db:
        ids = browse.matching_ids(db, view.where, transition.allowed, up_to_id=up_to)
        has_uncertain = transition is RETRY and bool(
            browse.matching_ids(db, view.where, [LaunchStatus.UNCERTAIN], up_to_id=up_to)
        )
    if has_uncertain and request.form.get("confirm") != "yes":
        flash("some of these launches are uncertain: tick the confirmation to retry them", "error")
        return redirect(url_for("console.bulk_preview", action=action, **view.link()))  # type: ignore[arg-type]
    changed = _apply_in_chunks(transition, ids, _describe(view))
    flash(f"{transition.done} {changed} of {len(ids)} launch(es)", "notice")
    return redirect(url_for("console.launches", **view.link()))  # type: ignore[arg-type]


def _apply_in_chunks(transition: Transition, ids: list[int], target: str) -> int:
    """One audit entry, then each chunk's change and its audit links together."""
    sessions = runtime().sessions
    now = datetime.now(UTC)
    with sessions.begin() as db:
        entry = audit.record(
            db,
            at=now,
            actor=auth.Role.ADMIN.value,
            action=transition.verb,
            target=target,
            requested=len(ids),
            changed=[],
        )
    changed = 0
    for start in range(0, len(ids), CHUNK):
        with sessions.begin() as db:
            done = transition.apply(db, ids[start : start + CHUNK], now)
            audit.add_changes(db, entry, done)
            changed += len(done)
    return changed


def _view(args: object = None) -> View:
    try:
        return parse_view(args or request.args, datetime.now(UTC))  # type: ignore[arg-type]
    except BadParameter as exc:
        abort(400, str(exc))


def _int_field(name: str) -> int:
    text = request.form.get(name, "")
    if not text.isdigit() or int(text) > MAX_ID:
        abort(400, f"{name}: expected the number the preview page gave, got {text!r}")
    return int(text)


def _describe(view: View) -> str:
    """The filter as the audit shows it: `status=failed rule=welcome q='bot:7'`."""
    parts = [f"{name}={value}" for name, value in view.params.items()]
    if view.q:
        parts.append(f"q={view.q!r}")
    return "all matching " + (" ".join(parts) or "(no filter)")
