"""`/ui/deliveries`: the stored webhooks, and for one of them its raw body, the events
decoded from it, the launches it made and every rule's decision on each event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from flask import abort, render_template, request
from werkzeug.datastructures import MultiDict

from automation.errors import BadParameter, PayloadError
from automation.events.payloads import decode_body
from automation.limits import MAX_ID
from automation.rules.cases import describe_event
from automation.rules.ruleset import Decision
from automation.store import browse
from automation.store.states import DeliveryStatus
from automation.web.api import parse_launch_query
from automation.web.console import bp
from automation.web.runtime import runtime

PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class Judged:
    """One decoded event and what each rule listening to its type decided."""

    event: str
    decisions: list[Decision]


@bp.get("/deliveries")
def deliveries() -> tuple[str, int] | str:
    """Stored webhooks newest first; filters `status`, `entity_id`, `since`, `until`."""
    args = request.args
    try:
        where = _filter(args)
    except BadParameter as exc:
        return render_template("deliveries.html", rows=None, error=str(exc), args=args), 400
    with runtime().sessions() as db:
        rows, next_id = browse.delivery_page(db, where, PAGE_SIZE)
    params = {key: value for key, value in args.items() if value and key != "cursor"}
    return render_template(
        "deliveries.html", rows=rows, next_id=next_id, params=params, error=None, args=args
    )


def _filter(args: MultiDict[str, str]) -> browse.DeliveryFilter:
    """The launch filters' own parsers read the shared parameters."""
    shared = {k: v for k in ("entity_id", "since", "until") if (v := args.get(k, "").strip())}
    query = parse_launch_query(MultiDict(shared), datetime.now(UTC))
    status_text = args.get("status", "").strip()
    if status_text and status_text not in {status.value for status in DeliveryStatus}:
        raise BadParameter("status", f"expected accepted or unrecognized, got {status_text!r}")
    cursor = args.get("cursor", "").strip()
    if cursor and (not cursor.isdigit() or int(cursor) > MAX_ID + 1):
        raise BadParameter("cursor", f"expected the cursor of a previous page, got {cursor!r}")
    return browse.DeliveryFilter(
        status=DeliveryStatus(status_text) if status_text else None,
        since=query.since,
        until=query.until,
        entity_id=query.entity_id,
        before_id=int(cursor) if cursor else None,
    )


@bp.get("/deliveries/<int:delivery_id>")
def delivery(delivery_id: int) -> str:
    """One webhook: raw body (collapsed), decoded events, launches, and every rule's
    decision on each event under the rules in use now."""
    if delivery_id > MAX_ID:
        abort(404, f"no delivery with id {delivery_id}")
    with runtime().sessions() as db:
        found = browse.delivery_body(db, delivery_id)
        if found is None:
            abort(404, f"no delivery with id {delivery_id}")
        launches = browse.delivery_launches(db, delivery_id)
    row, body, content_type = found
    judged, problem = _judge(body, content_type, row.received_at)
    return render_template(
        "delivery.html",
        row=row,
        body=body.decode("utf-8", errors="replace"),
        content_type=content_type,
        launches=launches,
        judged=judged,
        problem=problem,
        rules=runtime().rules.maybe_reload(),
    )


def _judge(
    body: bytes, content_type: str, received_at: datetime
) -> tuple[list[Judged], str | None]:
    """The events and decisions, or why the body cannot be read (stored anyway)."""
    try:
        payload = decode_body(body, content_type, received_at=received_at)
    except PayloadError as exc:
        return [], str(exc)
    current = runtime().rules.maybe_reload()
    now = datetime.now(UTC)
    return [
        Judged(describe_event(event), current.explain(event, now) if current else [])
        for event in payload.events
    ], None
