"""`/ui/deliveries`: the stored webhooks, and for one of them why it started the bots
it did and no others.

Both pages are views of what the CLI and the read API already answer, never a second
implementation: the list is `store.deliveries.list_deliveries` (as `deliveries list`
and `GET /api/deliveries`), its filters read by the API's own parser; one delivery is
`store.explain.explain_delivery` (as `deliveries show` and
`GET /api/deliveries/<id>/explain`), judged with the rules version that judged it on
arrival. The templates only lay out the explanation's fields.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from flask import abort, render_template, request
from werkzeug.datastructures import MultiDict

from automation.errors import BadParameter
from automation.limits import MAX_ID
from automation.store.deliveries import DeliveryQuery, list_deliveries, raw_body
from automation.store.explain import describe_explanation, explain_delivery
from automation.web.console import bp
from automation.web.deliveries import current_rules, parse_delivery_query, parse_window
from automation.web.runtime import runtime

#: Deliveries per page of the list.
PAGE_SIZE = 50
#: Characters of a raw body the page shows (a large webhook's is megabytes).
BODY_SHOWN = 20_000
#: The list's filters, as the API names them (the form sends them even when empty).
FILTERS = ("entity_id", "status", "since", "until")


@bp.get("/deliveries")
def deliveries() -> tuple[str, int] | str:
    """Stored webhooks newest first, keyset-paged by id; filters `entity_id` (a webhook
    naming that lead, contact, …), `status`, `since`, `until`."""
    args = request.args
    try:
        query = console_query(args, datetime.now(UTC))
    except BadParameter as exc:
        return render_template("deliveries.html", page=None, error=str(exc), args=args), 400
    with runtime().sessions() as db:
        page = list_deliveries(db, query)
    params = {name: value for name in FILTERS if (value := args.get(name, "").strip())}
    return render_template("deliveries.html", page=page, params=params, error=None, args=args)


def console_query(args: MultiDict[str, str], now: datetime) -> DeliveryQuery:
    """The list's query string read by the API's strict parser: fields the form left
    empty are dropped first (an empty filter does not filter); one page is PAGE_SIZE."""
    given = MultiDict(
        [(name, value.strip()) for name, value in args.items(multi=True) if value.strip()]
    )
    if "limit" in given:
        raise BadParameter("limit", "the console's pages have a fixed size")
    return replace(parse_delivery_query(given, now), limit=PAGE_SIZE)


@bp.get("/deliveries/<int:delivery_id>")
def delivery(delivery_id: int) -> str:
    """One webhook: its entities, the rules version that judged it, the raw body
    (folded), every event with every rule's decision, and the launches it made."""
    if delivery_id > MAX_ID:
        abort(404, f"no delivery with id {delivery_id}")
    try:
        offset, limit = parse_window(request.args)
    except BadParameter as exc:
        abort(400, str(exc))
    with runtime().sessions() as db:
        explanation = explain_delivery(db, delivery_id, current_rules, offset=offset, limit=limit)
        raw = raw_body(db, delivery_id) if explanation is not None else None
    if explanation is None or raw is None:
        abort(404, f"no delivery with id {delivery_id}")
    body = raw.body.decode("utf-8", errors="replace")
    return render_template(
        "delivery.html",
        x=explanation,
        row=explanation.delivery,
        raw=raw,
        body=body[:BODY_SHOWN],
        body_length=len(body),
        text="\n".join(describe_explanation(explanation)),
        pages=_pages(explanation.offset, explanation.limit, explanation.event_count),
    )


def _pages(offset: int, limit: int, count: int) -> dict[str, int]:
    """The offsets of the neighbouring windows of events that exist."""
    pages = {}
    if offset > 0:
        pages["first"] = 0
        pages["previous"] = max(0, offset - limit)
    if offset + limit < count:
        pages["next"] = offset + limit
        pages["last"] = (count - 1) // limit * limit
    return pages
