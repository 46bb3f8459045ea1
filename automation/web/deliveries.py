"""The read API of stored webhooks, behind the same `Bearer $ADMIN_TOKEN` as the
launch log: `GET /api/deliveries` finds them (by entity, status, time; newest first,
paged), `GET /api/deliveries/<id>/explain` says why each rule did or did not launch.

Both answer the models `deliveries list` and `deliveries show --json` print
(`store.deliveries`, `store.explain`): one shape for the CLI, the API and the console.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import MultiDict

from automation.errors import BadParameter
from automation.limits import MAX_ID
from automation.rules.load import RuleSet
from automation.store.deliveries import DeliveryQuery, list_deliveries
from automation.store.explain import EVENTS_SHOWN, explain_delivery
from automation.store.states import DeliveryStatus
from automation.times import parse_api_moment
from automation.web import api
from automation.web.runtime import runtime

bp = Blueprint("deliveries", __name__, url_prefix="/api")
bp.before_request(api._authorize)
bp.register_error_handler(BadParameter, api._bad_parameter)
bp.register_error_handler(SQLAlchemyError, api._database_unavailable)

QUERY_PARAMETERS = ("entity_id", "status", "since", "until", "limit", "cursor")


def parse_delivery_query(args: MultiDict[str, str], now: datetime) -> DeliveryQuery:
    """Read the query string strictly; raise `BadParameter` naming the first bad one."""
    for name in args:
        if name not in QUERY_PARAMETERS:
            expected = ", ".join(QUERY_PARAMETERS)
            raise BadParameter(name, f"unknown parameter; expected one of {expected}")
    limit = api._one(args, "limit", api._limit)
    return DeliveryQuery(
        entity_id=api._one(args, "entity_id", api._positive_id),
        statuses=_statuses(args.getlist("status")),
        since=api._one(args, "since", lambda text: parse_api_moment(text, now)),
        until=api._one(args, "until", lambda text: parse_api_moment(text, now)),
        limit=api.DEFAULT_LIMIT if limit is None else limit,
        before_id=api._one(args, "cursor", api._cursor),
    )


def _statuses(values: Sequence[str]) -> tuple[DeliveryStatus, ...]:
    known = {status.value: status for status in DeliveryStatus}
    found = []
    for item in (part for value in values for part in value.split(",")):
        if item not in known:
            raise BadParameter("status", f"expected one of {', '.join(known)}, got {item!r}")
        found.append(known[item])
    return tuple(dict.fromkeys(found))


@bp.get("/deliveries")
def list_stored() -> Response:
    """Deliveries newest first, filtered and paged as `parse_delivery_query` reads them."""
    query = parse_delivery_query(request.args, datetime.now(UTC))
    with runtime().sessions() as session:
        return api._json(list_deliveries(session, query))


#: The query parameters of an explanation: its window of events (and launches).
WINDOW_PARAMETERS = ("offset", "limit")
#: More events than any body holds (MAX_BODY_BYTES caps it far below).
MAX_OFFSET = 999_999_999


def parse_window(args: MultiDict[str, str]) -> tuple[int, int]:
    """`offset` (default 0) and `limit` (default EVENTS_SHOWN, at most MAX_LIMIT);
    raise `BadParameter` naming the first bad one."""
    for name in args:
        if name not in WINDOW_PARAMETERS:
            raise BadParameter(name, "unknown parameter; expected one of offset, limit")
    offset = api._one(args, "offset", _offset)
    limit = api._one(args, "limit", api._limit)
    return offset or 0, EVENTS_SHOWN if limit is None else limit


def _offset(text: str) -> int:
    if not api._DIGITS.fullmatch(text) or int(text) > MAX_OFFSET:
        raise ValueError(f"expected an integer from 0 to {MAX_OFFSET}, got {text!r}")
    return int(text)


@bp.get("/deliveries/<int:delivery_id>/explain")
def explain(delivery_id: int) -> Response:
    """Events `offset` to `offset + limit - 1` with every rule on their type, judged
    with the stored rules version at the delivery's arrival, every event counted by
    verdict; then its launches in the same window. Writes nothing."""
    offset, limit = parse_window(request.args)
    state = runtime()
    with state.sessions() as session:
        found = None
        if delivery_id <= MAX_ID:
            found = explain_delivery(
                session, delivery_id, current_rules, offset=offset, limit=limit
            )
    if found is None:
        abort(404, f"no delivery with id {delivery_id}")
    return api._json(found)


def current_rules() -> RuleSet:
    """Today's rules as this server runs them (the last good file): what judges a
    delivery whose stored version cannot (the API and the console alike)."""
    rules = runtime().rules.maybe_reload()
    assert rules is not None, "Runtime.build refuses to start without rules"
    return rules
