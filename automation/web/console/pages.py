"""The console's reading pages: login, overview, the launch list and one launch."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import abort, current_app, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from automation.errors import BadParameter
from automation.limits import MAX_ID
from automation.store import audit, browse, launchlog, story, transitions
from automation.store.overview import DAY_CAP, read_overview
from automation.web.console import auth, bp
from automation.web.console.query import View, parse_view, without_status
from automation.web.runtime import runtime

#: Launches per page of the list.
PAGE_SIZE = 50
#: Seconds between live refreshes of the list and the overview.
REFRESH_SECONDS = 5


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int] | str | tuple[str, int, dict[str, str]]:
    """One password field, `token`: ADMIN_TOKEN acts, VIEWER_TOKEN reads. Too many
    refused logins from one address lock it out for a while (`auth.attempt`)."""
    target = auth.safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", next=target, error=None)
    state, now = runtime(), datetime.now(UTC)
    address = auth.client_address(request, state.settings.console_proxy_hops)
    tried = auth.attempt(
        state.sessions, state.settings, request.form.get("token", ""), address, now
    )
    if tried.locked_until is not None:
        seconds, error = auth.locked_out(address, tried.locked_until, now, state.settings)
        page = render_template("login.html", next=target, error=error)
        return page, 429, {"Retry-After": str(seconds)}
    if tried.role is None:
        auth.failed_login(current_app, address, tried.failures)
        return render_template("login.html", next=target, error="wrong token"), 401
    auth.log_in(tried.role)
    return redirect(target)


@bp.post("/logout")
def logout() -> BaseResponse:
    session.clear()
    return redirect(url_for("console.login"))


@bp.get("/")
def overview() -> str:
    """Launches by status (24 h), backlog, dispatchers, pause, webhooks, calls, rules."""
    state = runtime()
    rules = state.rules.maybe_reload()
    with state.sessions() as db:
        figures = read_overview(db, datetime.now(UTC))
        actions = audit.recent(db, limit=5)
    template = "overview_live.html" if _is_htmx() else "overview.html"
    return render_template(
        template,
        o=figures,
        actions=actions,
        rules=rules,
        loader=state.rules,
        refresh=REFRESH_SECONDS,
        day_cap=DAY_CAP,
    )


@bp.get("/launches")
def launches() -> tuple[str, int] | str:
    """The launch log: status tabs with capped counts, filters, keyset pages."""
    try:
        view = parse_view(request.args, datetime.now(UTC))
    except BadParameter as exc:
        return render_template("launches.html", view=None, error=str(exc), args=request.args), 400
    with runtime().sessions() as db:
        rows, next_cursor = browse.page(db, view.where, PAGE_SIZE, view.cursor)
        counts = browse.status_counts(db, view.where.with_statuses(()))
        total = browse.capped_count(db, view.where.with_statuses(()))
    template = "launches_table.html" if _is_htmx() else "launches.html"
    return render_template(
        template,
        view=view,
        tabs=without_status(view),
        rows=rows,
        counts=counts,
        total=total,
        next_cursor=next_cursor.encode() if next_cursor else None,
        error=None,
        args=request.args,
        refresh=REFRESH_SECONDS,
    )


@bp.get("/launches/<int:launch_id>")
def launch(launch_id: int) -> str:
    """One launch's story (the same as `automation launches show`), its audit trail
    and the actions its status allows."""
    if launch_id > MAX_ID:
        abort(404, f"no launch with id {launch_id}")
    with runtime().sessions() as db:
        told = story.launch_story(db, launch_id)
        if told is None:
            abort(404, f"no launch with id {launch_id}")
        trail = audit.for_launch(db, launch_id)
    return render_template(
        "launch.html",
        story=told,
        row=told.launch,
        text="\n".join(launchlog.describe_story(told)),
        trail=trail,
        can_retry=told.launch.status in transitions.RETRY.allowed,
        can_cancel=told.launch.status in transitions.CANCEL.allowed,
    )


def view_link(view: View, **changes: str | None) -> str:
    """URL of the launches page for `view` with some parameters changed."""
    return url_for("console.launches", **view.link(**changes))  # type: ignore[arg-type]


def _is_htmx() -> bool:
    """A live refresh asks for the changing part only (htmx sends HX-Request)."""
    return request.headers.get("HX-Request") == "true" and not request.headers.get("HX-Boosted")


bp.add_app_template_global(view_link, "view_link")
