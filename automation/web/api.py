"""The read API: the launch log as JSON, behind `Authorization: Bearer $ADMIN_TOKEN`.

`GET /api/launches` lists launches newest first with the launch-log filters,
`GET /api/launches/<id>` shows one with its delivery and the API calls it rode in,
`GET /api/deliveries/<id>` shows a stored webhook with its body and launches, and
`GET /api/openapi.json` describes the whole HTTP surface. Without `ADMIN_TOKEN` the
read endpoints answer 404, as if they did not exist: an API nobody secured stays shut.

The response shapes are pydantic models so that `automation.openapi` can publish
their JSON Schemas: the document and the answers come from the same definitions.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from flask import Blueprint, Response, abort, jsonify, request
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from automation.errors import BadParameter
from automation.limits import MAX_ID
from automation.store import story
from automation.store.deliveries import expansions_of
from automation.store.explain import EVENTS_SHOWN
from automation.store.launchlog import LaunchQuery
from automation.store.states import LaunchStatus
from automation.times import parse_api_moment
from automation.web.runtime import runtime
from automation.web.schemas import (
    DeliveryDetail,
    Error,
    LaunchDetail,
    LaunchPage,
    detail_of,
)

bp = Blueprint("api", __name__, url_prefix="/api")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Launches `GET /api/deliveries/<id>` shows unless asked (as many as the explanation's
#: events, EVENTS_SHOWN, which `parse_window` gives by default).
LAUNCHES_SHOWN = EVENTS_SHOWN
#: The cursor is opaque to clients; today it is the last id of the page.
CURSOR_PATTERN = r"^[0-9]{1,30}$"
#: PostgreSQL text cannot hold NUL, and an empty name is a forgotten variable.
RULE_PATTERN = r"^[^\u0000]+$"
QUERY_PARAMETERS = ("status", "rule", "bot_id", "entity_id", "since", "until", "limit", "cursor")

_CURSOR = re.compile(CURSOR_PATTERN)
_RULE = re.compile(RULE_PATTERN)
_DIGITS = re.compile(r"^[0-9]{1,30}$")


# --------------------------------------------------------------------------- filters


def parse_launch_query(args: MultiDict[str, str], now: datetime) -> LaunchQuery:
    """Read the query string strictly; raise `BadParameter` naming the first bad one.

    Unknown and repeated parameters are errors too: a misspelt filter that silently
    lists every launch is worse than a 400.
    """
    for name in args:
        if name not in QUERY_PARAMETERS:
            expected = _listed(QUERY_PARAMETERS)
            raise BadParameter(name, f"unknown parameter; expected one of {expected}")
    limit = _one(args, "limit", _limit)
    return LaunchQuery(
        statuses=_statuses(args.getlist("status")),
        rule=_one(args, "rule", _rule),
        bot_id=_one(args, "bot_id", _positive_id),
        entity_id=_one(args, "entity_id", _positive_id),
        since=_one(args, "since", lambda text: parse_api_moment(text, now)),
        until=_one(args, "until", lambda text: parse_api_moment(text, now)),
        before_id=_one(args, "cursor", _cursor),
        limit=DEFAULT_LIMIT if limit is None else limit,
    )


def _one(args: MultiDict[str, str], name: str, parse: Callable[[str], T]) -> T | None:
    """The parameter parsed, None when absent; `parse` raises ValueError with the why."""
    values = args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadParameter(name, f"given {len(values)} times, expected once")
    try:
        return parse(values[0])
    except ValueError as exc:
        raise BadParameter(name, str(exc)) from exc


def _statuses(values: Sequence[str]) -> tuple[LaunchStatus, ...]:
    """`status=sent&status=failed` and `status=sent,failed` alike."""
    known = {status.value: status for status in LaunchStatus}
    found: list[LaunchStatus] = []
    for item in (part for value in values for part in value.split(",")):
        if item not in known:
            raise BadParameter("status", f"expected one of {_listed(known)}, got {item!r}")
        found.append(known[item])
    return tuple(dict.fromkeys(found))


def _rule(text: str) -> str:
    if not _RULE.fullmatch(text):
        raise ValueError(f"expected a rule name, got {text!r}")
    return text


def _positive_id(text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return int(text)


def _limit(text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"expected an integer from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def _cursor(text: str) -> int | None:
    """The id to continue below; one past every id means "from the top"."""
    if not _CURSOR.fullmatch(text):
        raise ValueError(f"expected the next_cursor of a previous page, got {text!r}")
    before = int(text)
    return before if before <= MAX_ID else None


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names)


# --------------------------------------------------------------------------- answers


def launch_page(session: Session, query: LaunchQuery) -> LaunchPage:
    """One page of launches, newest first (see `story.launch_page`)."""
    page = story.launch_page(session, query)
    return LaunchPage(launches=list(page.launches), next_cursor=page.next_cursor)


def launch_detail(session: Session, launch_id: int) -> LaunchDetail | None:
    """The launch's story: its delivery (body left out), its calls in the order made
    and the verdict."""
    told = story.launch_story(session, launch_id)
    return detail_of(told) if told is not None else None


def delivery_detail(
    session: Session, delivery_id: int, offset: int = 0, limit: int = LAUNCHES_SHOWN
) -> DeliveryDetail | None:
    """The delivery, its body decoded for reading, and a window of the launches it
    caused by id."""
    told = story.delivery_story(session, delivery_id, offset, limit)
    if told is None:
        return None
    return DeliveryDetail(
        delivery=told.delivery,
        body=told.body.decode("utf-8", errors="replace"),
        launches=list(told.launches),
        offset=offset,
        limit=limit,
        expansion=expansions_of(session, [delivery_id]).get(delivery_id),
    )


# ---------------------------------------------------------------------------- routes


@bp.before_request
def _authorize() -> Response | None:
    """Bearer ADMIN_TOKEN on every read endpoint; the document itself is public.

    Without ADMIN_TOKEN the endpoints answer the same 404 as an unknown URL.
    """
    if request.endpoint == "api.openapi_document":
        return None
    settings = runtime().settings
    if settings.admin_token is None:
        abort(404)
    # VIEWER_TOKEN reads too: everything here is read-only.
    tokens = [t.get_secret_value() for t in (settings.admin_token, settings.viewer_token) if t]
    header = request.headers.get("Authorization", "")
    if not any([_bearer_matches(header, token) for token in tokens]):  # no short-circuit
        response = _json(
            Error(error="missing or wrong bearer token: send Authorization: Bearer <ADMIN_TOKEN>"),
            401,
        )
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return None


def _bearer_matches(header: str, expected: str) -> bool:
    """Constant-time, so the answer time tells nothing about how much of a guess was right.

    WSGI hands headers over as latin-1 text; encoding back gives the bytes sent.
    """
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("latin-1"), expected.encode())


@bp.errorhandler(BadParameter)
def _bad_parameter(exc: BadParameter) -> Response:
    return _json(Error(error=str(exc)), 400)


@bp.errorhandler(SQLAlchemyError)
def _database_unavailable(exc: SQLAlchemyError) -> Response:
    """A database outage is a 503 to retry, not a traceback."""
    return _json(Error(error="database unavailable, retry later"), 503)


@bp.get("/launches")
def list_launches() -> Response:
    """Launches newest first, filtered and paged as `parse_launch_query` reads them."""
    query = parse_launch_query(request.args, datetime.now(UTC))
    with runtime().sessions() as session:
        return _json(launch_page(session, query))


@bp.get("/launches/<int:launch_id>")
def show_launch(launch_id: int) -> Response:
    """One launch with its delivery and calls, or 404."""
    return _shown("launch", launch_id, launch_detail)


@bp.get("/deliveries/<int:delivery_id>")
def show_delivery(delivery_id: int) -> Response:
    """One stored webhook with its body and a window of its launches (`offset`,
    `limit`: the first 50 by default; a bulk webhook has tens of thousands), or 404."""
    from automation.web.deliveries import parse_window

    offset, limit = parse_window(request.args)
    return _shown("delivery", delivery_id, lambda s, i: delivery_detail(s, i, offset, limit))


def _shown(noun: str, item_id: int, read: Callable[[Session, int], BaseModel | None]) -> Response:
    """What `read` makes of the row `item_id`, or the API's 404 naming the `noun`."""
    with runtime().sessions() as session:
        detail = read(session, item_id)
    if detail is None:
        abort(404, f"no {noun} with id {item_id}")
    return _json(detail)


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of the whole HTTP surface; needs no token."""
    from automation.web.openapi import document

    return jsonify(document())


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")
