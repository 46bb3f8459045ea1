"""The OpenAPI document stays true: it lists exactly the app's routes, every answer the
real app gives validates against it, and schemathesis, fuzzing the live app from it,
finds no server error and no answer outside it. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from sqlalchemy import insert
from sqlalchemy.orm import sessionmaker

from automation.config import Settings
from automation.store.database import make_engine
from automation.store.models import ApiCall, CallLaunch
from automation.web.openapi import document

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = "application/x-www-form-urlencoded"
DOCUMENT = document()
STATUS_LEAD = (
    b"account%5Bid%5D=30112233&account%5Bsubdomain%5D=mybrand"
    b"&leads%5Bstatus%5D%5B0%5D%5Bid%5D=27754599&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=59936202"
)
TALK = b'{"account": {"id": "30112233"}, "talk": {"add": [{"talk_id": "7", "contact_id": "5"}]}}'


def seed(app: Any) -> None:
    """A delivery with a launch (id 1) that rode in one API call, and a second delivery."""
    client = app.test_client()
    client.post("/webhooks/amocrm/s3cret", data=STATUS_LEAD, content_type=FORM)
    client.post("/webhooks/amocrm/s3cret", data=TALK, content_type="application/json")
    sessions = app.extensions["automation"].sessions
    now = datetime.now(UTC)
    call = {
        "dispatcher": "host:1",
        "endpoint": "/api/v2/salesbot/run",
        "launch_count": 1,
        "started_at": now,
        "finished_at": now,
        "status_code": 200,
        "outcome": "accepted",
    }
    with sessions.begin() as session:
        call_id = session.execute(insert(ApiCall).returning(ApiCall.id), call).scalar_one()
        session.execute(insert(CallLaunch), {"call_id": call_id, "launch_id": 1, "position": 0})


def break_database(app: Any) -> None:
    """Point the app at a server that refuses connections, as in an outage."""
    broken = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    state = app.extensions["automation"]
    state.engine.dispose()  # the app fixture disposes the broken one at the end
    state.engine, state.sessions = broken, sessionmaker(broken)


# ------------------------------------------------------------------------- routes


def routed_operations(app: Any) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route, `<int:launch_id>` written `{launch_id}`."""
    found: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # Flask adds it; no static folder ships, so it 404s
            continue
        path = openapi_path(rule.rule)
        found |= {(method.lower(), path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def openapi_path(rule: str) -> str:
    """`/api/launches/<int:launch_id>` → `/api/launches/{launch_id}`."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def documented_operations() -> set[tuple[str, str]]:
    return {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}


def test_every_route_is_documented_and_every_documented_operation_is_routed(app: Any) -> None:
    assert routed_operations(app) == documented_operations()


def test_read_api_operations_require_the_bearer_token_and_the_rest_do_not() -> None:
    secured = {
        (method, path)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if operation.get("security")
    }
    assert secured == {
        ("get", "/api/launches"),
        ("get", "/api/launches/{launch_id}"),
        ("get", "/api/deliveries"),
        ("get", "/api/deliveries/{delivery_id}"),
        ("get", "/api/deliveries/{delivery_id}/explain"),
    }


def test_document_loads_in_schemathesis_with_every_operation_valid() -> None:
    loaded = schemathesis.openapi.from_dict(document())
    results = list(loaded.get_all_operations())
    problems = [str(result.err()) for result in results if isinstance(result, Err)]
    assert problems == []
    assert len(results) == len(documented_operations())


def test_every_component_schema_is_valid_json_schema() -> None:
    invalid = [
        name
        for name, schema in DOCUMENT["components"]["schemas"].items()
        if not jsonschema_rs.meta.is_valid(schema)
    ]
    assert invalid == []


def test_served_document_is_the_built_one_with_no_token_needed(client: Any) -> None:
    assert client.get("/api/openapi.json").json == DOCUMENT


# ------------------------------------------------------------------ real answers


@dataclass(frozen=True)
class Exchange:
    """One request to the real app (`"GET /path?query"`) and the status it must get."""

    name: str
    request: str
    status: int
    settings: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str = FORM
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    database_down: bool = False

    @property
    def method(self) -> str:
        return self.request.split(" ", 1)[0]

    @property
    def path(self) -> str:
        return self.request.split(" ", 1)[1]


HOOK = "POST /webhooks/amocrm/s3cret"
#: More fields than a webhook decodes at once: stored raw and answered `queued`.
LARGE = b"account[id]=1&" + b"&".join(b"leads[add][%d][id]=%d" % (i, i + 1) for i in range(10_001))
JSON = "application/json"
EXCHANGES = [
    Exchange("webhook form", HOOK, 200, body=STATUS_LEAD),
    Exchange("webhook json", HOOK, 200, body=TALK, content_type=JSON),
    Exchange("webhook queued", HOOK, 200, body=LARGE),
    Exchange("webhook undecodable", HOOK, 400, body=b"a[=1"),
    Exchange("webhook other account", HOOK, 403, {"amocrm_account_id": 111}, STATUS_LEAD),
    Exchange("webhook wrong secret", "POST /webhooks/amocrm/guess", 404, body=STATUS_LEAD),
    Exchange("webhook too large", HOOK, 413, {"max_body_bytes": 10}, STATUS_LEAD),
    Exchange("webhook xml", HOOK, 415, body=b"<a/>", content_type="text/xml"),
    Exchange("webhook unconfigured", HOOK, 503, {"webhook_secret": None}, STATUS_LEAD),
    Exchange("webhook database down", HOOK, 503, body=STATUS_LEAD, database_down=True),
    Exchange("healthz", "GET /healthz", 200),
    Exchange("healthz database down", "GET /healthz", 503, database_down=True),
    Exchange("metrics", "GET /metrics", 200),
    Exchange("openapi", "GET /api/openapi.json", 200, headers={}),
    Exchange("launches", "GET /api/launches?limit=1", 200),
    Exchange("launches bad filter", "GET /api/launches?limit=0", 400),
    Exchange("launches no token", "GET /api/launches", 401, headers={}),
    Exchange("launches api off", "GET /api/launches", 404, {"admin_token": None}),
    Exchange("launches database down", "GET /api/launches", 503, database_down=True),
    Exchange("launch", "GET /api/launches/1", 200),
    Exchange("launch wrong token", "GET /api/launches/1", 401, headers={"Authorization": "x"}),
    Exchange("launch unknown", "GET /api/launches/9", 404),
    Exchange("launch database down", "GET /api/launches/1", 503, database_down=True),
    Exchange("delivery", "GET /api/deliveries/1", 200),
    Exchange("delivery no token", "GET /api/deliveries/1", 401, headers={}),
    Exchange("delivery unknown", "GET /api/deliveries/9", 404),
    Exchange("delivery window", "GET /api/deliveries/1?offset=0&limit=1", 200),
    Exchange("delivery bad window", "GET /api/deliveries/1?offset=-1", 400),
    Exchange("delivery database down", "GET /api/deliveries/1", 503, database_down=True),
    Exchange("deliveries", "GET /api/deliveries?entity_id=27754599&limit=1", 200),
    Exchange("deliveries bad filter", "GET /api/deliveries?status=sent", 400),
    Exchange("deliveries no token", "GET /api/deliveries", 401, headers={}),
    Exchange("deliveries api off", "GET /api/deliveries", 404, {"admin_token": None}),
    Exchange("deliveries database down", "GET /api/deliveries", 503, database_down=True),
    Exchange("explain", "GET /api/deliveries/1/explain", 200),
    Exchange("explain no token", "GET /api/deliveries/1/explain", 401, headers={}),
    Exchange("explain unknown", "GET /api/deliveries/9/explain", 404),
    Exchange("explain bad window", "GET /api/deliveries/1/explain?limit=0", 400),
    Exchange("explain database down", "GET /api/deliveries/1/explain", 503, database_down=True),
]


def template(app: Any, method: str, path: str) -> str:
    """The document's path for a request: the app's matching route, OpenAPI-spelt."""
    rule, _ = app.url_map.bind("localhost").match(path.split("?")[0], method, return_rule=True)
    return openapi_path(rule.rule)


def validator(schema: dict[str, Any]) -> Any:
    """A validator for a schema of the document, its `#/components/...` refs resolvable."""
    return jsonschema_rs.Draft202012Validator(
        {**schema, "components": DOCUMENT["components"]}, validate_formats=True
    )


def conformance_problems(path: str, method: str, answer: Any) -> list[str]:
    """What in the answer the document does not allow: status, media type, body, headers."""
    operation = DOCUMENT["paths"][path][method.lower()]
    documented = operation["responses"].get(str(answer.status_code))
    if documented is None:
        return [f"status {answer.status_code} is not documented"]
    [(media_type, content)] = documented["content"].items()
    if answer.mimetype != media_type:
        return [f"media type {answer.mimetype!r}, documented {media_type!r}"]
    body = answer.get_json() if media_type == "application/json" else answer.get_data(True)
    problems = [error.message for error in validator(content["schema"]).iter_errors(body)]
    for name, header in documented.get("headers", {}).items():
        if not validator(header["schema"]).is_valid(answer.headers.get(name)):
            problems.append(f"header {name}: {answer.headers.get(name)!r}")
    return problems


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda exchange: exchange.name)
def test_real_answer_has_a_documented_status_and_validates_against_its_schema(
    make_settings: Callable[..., Settings], make_app: Callable[[Settings], Any], exchange: Exchange
) -> None:
    seed(make_app(make_settings(admin_token=TOKEN)))
    app = make_app(make_settings(**{"admin_token": TOKEN, **exchange.settings}))
    if exchange.database_down:
        break_database(app)
    answer = app.test_client().open(
        exchange.path,
        method=exchange.method,
        data=exchange.body,
        content_type=exchange.content_type,
        headers=exchange.headers,
    )
    assert answer.status_code == exchange.status
    operation = template(app, exchange.method, exchange.path)
    assert conformance_problems(operation, exchange.method, answer) == []


def test_every_documented_answer_is_exercised_by_a_real_request_above(app: Any) -> None:
    documented = {
        (method.upper(), path, int(status))
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }
    exercised = {
        (exchange.method, template(app, exchange.method, exchange.path), exchange.status)
        for exchange in EXCHANGES
    }
    assert exercised == documented


def test_method_not_allowed_lists_the_allowed_methods(client: Any) -> None:
    answer = client.delete("/healthz")
    assert answer.status_code == 405
    assert sorted(answer.headers["Allow"].split(", ")) == ["GET", "HEAD", "OPTIONS"]


# ----------------------------------------------------------------- schemathesis

FUZZ = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"adminToken": {"bearer": TOKEN}}},
        # The right secret, so that bodies reach the decoder instead of the 404.
        "parameters": {"path.secret": "s3cret"},
        "generation": {"max-examples": 25},
        "operations": [
            {
                # A body the schema allows may still not be an amoCRM webhook (`{}`,
                # `account=x`): the contract answers those 400, and never 5xx.
                "include-operation-id": "receiveWebhook",
                "checks": {"positive_data_acceptance": {"expected-statuses": [200, 400]}},
            }
        ],
    }
)
# Loaded from the document itself: the app under test needs this test's database, so
# it is attached per test below. (schemathesis' fixture loader, `from_fixture`, would
# do that, but in schemathesis 4.32.5 it fails on pytest 9.2: `Function._nodeid`.)
fuzzed = schemathesis.openapi.from_dict(document(), config=FUZZ)


@pytest.fixture
def fuzz_app(make_settings: Callable[..., Settings], make_app: Callable[[Settings], Any]) -> Any:
    app = make_app(make_settings(admin_token=TOKEN))
    seed(app)
    return app


@fuzzed.parametrize()
# One app for all examples of a test, on purpose: what one request stores, the next reads.
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    case: Any, fuzz_app: Any
) -> None:
    # The operation and its schema both name the app: requests go to it, and so do
    # the checks' own probes (the same request without the token, for instance).
    case.operation.app = case.operation.schema.app = fuzz_app
    case.call_and_validate()
