"""The OpenAPI 3.1 document of the whole HTTP surface, served at `/api/openapi.json`.

Response schemas come from the pydantic models the handlers answer with (the read
API's in `web.schemas`, the webhook's and `/healthz`'s in `web.docshapes`), and the
query parameters from the same constants the parser checks against, so the document
cannot drift from the code unnoticed. `tests/web/test_openapi.py` holds it to the running
app: every route documented and nothing else, every answer valid against it.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from automation.limits import MAX_ID
from automation.store.deliveries import DeliveryPage
from automation.store.explain import EVENTS_SHOWN, DeliveryExplanation
from automation.store.states import DeliveryStatus, LaunchStatus
from automation.times import RELATIVE_PATTERN
from automation.web.api import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT, RULE_PATTERN
from automation.web.deliveries import MAX_OFFSET
from automation.web.docshapes import Health, WebhookAccepted, WebhookQueued
from automation.web.schemas import DeliveryDetail, Error, LaunchDetail, LaunchPage

JSON = dict[str, Any]
_REF = "#/components/schemas/{model}"


_MODELS: tuple[type[BaseModel], ...] = (
    Error,
    WebhookAccepted,
    WebhookQueued,
    Health,
    LaunchPage,
    LaunchDetail,
    DeliveryDetail,
    DeliveryPage,
    DeliveryExplanation,
)


def document() -> JSON:
    """The document as a fresh dict (callers may change it; the built one stays intact)."""
    return copy.deepcopy(_document())


@cache
def _document() -> JSON:
    """Built once per process: it depends only on the code."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "amoCRM automation server",
            "version": _version(),
            "description": (
                "amoCRM webhooks in, Salesbot launches out. The read API (`/api/launches`, "
                "`/api/deliveries`) needs `Authorization: Bearer $ADMIN_TOKEN` and answers "
                '404 when ADMIN_TOKEN is not set. Every error is JSON: `{"error": message}`.'
            ),
        },
        "paths": {
            "/webhooks/amocrm/{secret}": {"post": _webhook()},
            "/healthz": {"get": _healthz()},
            "/metrics": {"get": _metrics()},
            "/api/launches": {"get": _list_launches()},
            "/api/launches/{launch_id}": {"get": _show("launch", "LaunchDetail")},
            "/api/deliveries": {"get": _list_deliveries()},
            "/api/deliveries/{delivery_id}": {"get": _show_delivery()},
            "/api/deliveries/{delivery_id}/explain": {"get": _explain()},
            "/api/openapi.json": {"get": _openapi()},
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The ADMIN_TOKEN setting.",
                }
            },
        },
    }


def _version() -> str:
    try:
        return version("amocrm-automation")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def _schemas() -> JSON:
    """Every model's JSON Schema, and the enums and models they refer to, by name."""
    mode: Literal["serialization"] = "serialization"
    pairs = [(model, mode) for model in _MODELS]
    _, schemas = models_json_schema(pairs, ref_template=_REF)
    defs: JSON = schemas["$defs"]
    return defs


# ------------------------------------------------------------------------ operations


def _webhook() -> JSON:
    return {
        "operationId": "receiveWebhook",
        "summary": "Receive an amoCRM webhook",
        "description": (
            "Stores the body and the launches its events start in one transaction, then "
            "answers 200. A payload problem is a 4xx naming it, never a 5xx; 503 means "
            "the delivery was not stored and amoCRM should retry."
        ),
        "parameters": [
            {
                "name": "secret",
                "in": "path",
                "required": True,
                "description": "WEBHOOK_SECRET; a wrong one answers 404.",
                "schema": {"type": "string", "minLength": 1},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                    "example": {
                        "account[id]": "30112233",
                        "account[subdomain]": "mybrand",
                        "leads[status][0][id]": "27754599",
                        "leads[status][0][status_id]": "59936202",
                        "leads[status][0][pipeline_id]": "7173574",
                    },
                },
                "application/json": {
                    "schema": {"type": "object"},
                    "example": {
                        "account": {"id": "30112233"},
                        "talk": {"add": [{"talk_id": "7", "contact_id": "5"}]},
                    },
                },
            },
        },
        "responses": {
            "200": _json(
                "Stored; counts of events and of new launches. A large body (more than "
                "10,000 fields, 200 launches or 1,000 entities) is stored raw and answered "
                "`queued`: a dispatcher expands its launches right after.",
                "WebhookAccepted",
                "WebhookQueued",
            ),
            "400": _error("The body is not an amoCRM webhook we can decode."),
            "403": _error("From another account than AMOCRM_ACCOUNT_ID / AMOCRM_SUBDOMAIN."),
            "404": _error("Wrong secret."),
            "413": _error("The body is larger than MAX_BODY_BYTES."),
            "415": _error("Neither form-encoded nor JSON."),
            "503": _error("WEBHOOK_SECRET is not set, or the database is unavailable."),
        },
    }


def _healthz() -> JSON:
    return {
        "operationId": "health",
        "summary": "Can this server accept and store webhooks now?",
        "responses": {
            "200": _json(
                "Healthy (`ok`), or storing webhooks while launches do not go out (`degraded`).",
                "Health",
            ),
            "503": _json(
                "Database unreachable or behind, no rules loaded, or no WEBHOOK_SECRET.", "Health"
            ),
        },
    }


def _metrics() -> JSON:
    return {
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "responses": {
            "200": {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }


def _openapi() -> JSON:
    return {
        "operationId": "openapi",
        "summary": "This document",
        "security": [],
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }


def _list_launches() -> JSON:
    return {
        "operationId": "listLaunches",
        "summary": "The launch log, newest first",
        "description": (
            "Filters combine with AND. Page with `limit` and the `next_cursor` of the "
            "previous page; pages stay stable while new launches arrive. Unknown or "
            "repeated parameters are a 400, like bad values."
        ),
    } | _page_of("launches", "LaunchPage", _launch_filters())


def _list_deliveries() -> JSON:
    return {
        "operationId": "listDeliveries",
        "summary": "Stored webhooks, newest first: find the ones about a lead or contact",
        "description": (
            "`entity_id` finds every webhook whose events name that lead, contact, "
            "company, customer or chat contact, whether or not it launched anything. "
            "Page with `limit` and `next_cursor`, as for launches."
        ),
    } | _page_of("deliveries", "DeliveryPage", _delivery_filters())


def _page_of(nouns: str, schema: str, filters: list[JSON]) -> JSON:
    """What the two listings share: the token, their filters, a page or a 400 naming
    the bad parameter."""
    return {
        "security": [{"adminToken": []}],
        "parameters": filters,
        "responses": {
            "200": _json(f"A page of {nouns}.", schema),
            "400": _error("A parameter is unknown or has a bad value; the message names it."),
            **_read_errors(),
        },
    }


def _explain() -> JSON:
    operation = _show("delivery", "DeliveryExplanation")
    return operation | {
        "operationId": "explainDelivery",
        "summary": "Why a delivery did (not) start each bot",
        "description": (
            "A window of its events (`offset`, `limit`: the first 50 by default), and "
            "every rule on each one's type: matched or why not (failed conditions, "
            "outside active hours, missing entity, cooldown, duplicate, an earlier rule's "
            "stop: true), judged with the rules version stored for the delivery at its "
            "arrival time; `rules.note` says when today's file judged instead. Every "
            "event counted by verdict (`verdicts`, `event_count`). Then the launches it "
            "made, by id, in the same window (`launch_count` all of them). Writes nothing."
        ),
        "parameters": [*operation["parameters"], *_window("event (and launch)", "events")],
        "responses": {
            "200": _json("The explanation.", "DeliveryExplanation"),
            "400": _error("A parameter is unknown or has a bad value; the message names it."),
            **_read_errors(),
        },
    }


def _show_delivery() -> JSON:
    operation = _show("delivery", "DeliveryDetail")
    return operation | {
        "description": (
            "Its record, its raw body as text and a window of the launches it made, by "
            "id (`offset`, `limit`: the first 50 by default; `delivery.launch_count` "
            "counts them all)."
        ),
        "parameters": [*operation["parameters"], *_window("launch", "launches")],
        "responses": {
            "200": _json("The delivery.", "DeliveryDetail"),
            "400": _error("A parameter is unknown or has a bad value; the message names it."),
            **_read_errors(),
        },
    }


def _window(one: str, many: str) -> list[JSON]:
    """`offset` and `limit` of a delivery's window (`deliveries.parse_window`)."""
    return [
        _query(
            "offset",
            {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
            f"The first {one} shown, counting from 0.",
        ),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": EVENTS_SHOWN},
            f"How many {many} are shown.",
        ),
    ]


def _delivery_filters() -> list[JSON]:
    by_name = {parameter["name"]: parameter for parameter in _launch_filters()}
    status = _query(
        "status",
        {"type": "array", "items": {"$ref": _REF.format(model=DeliveryStatus.__name__)}},
        "Any of these statuses; repeat the parameter or separate with commas.",
        explode=True,
    )
    return [
        by_name["entity_id"] | {"description": "A lead's, contact's, … id its events name."},
        status,
        by_name["since"] | {"description": "Received at or after: RFC 3339, a date, or ago."},
        by_name["until"] | {"description": "Received before; the same forms as `since`."},
        by_name["limit"] | {"description": "Deliveries per page."},
        by_name["cursor"],
    ]


def _show(noun: str, schema: str) -> JSON:
    return {
        "operationId": f"show{noun.capitalize()}",
        "summary": f"One {noun} with what belongs to it",
        "security": [{"adminToken": []}],
        "parameters": [
            {
                "name": f"{noun}_id",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            }
        ],
        "responses": {"200": _json(f"The {noun}.", schema), **_read_errors()},
    }


def _launch_filters() -> list[JSON]:
    moment = {
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "string", "format": "date"},
            {"type": "string", "minLength": 2, "pattern": RELATIVE_PATTERN},
        ]
    }
    positive = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    return [
        _query(
            "status",
            {"type": "array", "items": {"$ref": _REF.format(model=LaunchStatus.__name__)}},
            "Any of these statuses; repeat the parameter or separate with commas.",
            explode=True,
        ),
        _query("rule", {"type": "string", "pattern": RULE_PATTERN}, "The rule's exact name."),
        _query("bot_id", positive, "The Salesbot's id."),
        _query("entity_id", positive, "The lead's, contact's, … id."),
        _query("since", moment, "Created at or after: RFC 3339, a date, or ago (`2h`, `3d`)."),
        _query("until", moment, "Created before; the same forms as `since`."),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            "Launches per page.",
        ),
        _query(
            "cursor",
            {"type": "string", "pattern": CURSOR_PATTERN},
            "`next_cursor` of the previous page, unchanged; its form may change.",
        ),
    ]


def _query(name: str, schema: JSON, description: str, *, explode: bool = False) -> JSON:
    parameter: JSON = {"name": name, "in": "query", "description": description, "schema": schema}
    if explode:
        parameter |= {"style": "form", "explode": True}
    return parameter


def _read_errors() -> JSON:
    return {
        "401": {
            **_error("No bearer token, or the wrong one."),
            "headers": {
                "WWW-Authenticate": {
                    "description": "`Bearer`",
                    "schema": {"type": "string", "const": "Bearer"},
                }
            },
        },
        "404": _error("No such id, or ADMIN_TOKEN is not set (the read API is off)."),
        "503": _error("The database is unavailable; retry later."),
    }


def _json(description: str, schema: str, *alternatives: str) -> JSON:
    """An answer of the `schema` model, or of any one of it and the `alternatives`."""
    refs = [{"$ref": _REF.format(model=model)} for model in (schema, *alternatives)]
    return {
        "description": description,
        "content": {"application/json": {"schema": {"oneOf": refs} if alternatives else refs[0]}},
    }


def _error(description: str) -> JSON:
    return _json(description, "Error")
