"""Log lines: JSON everywhere with LOG_FORMAT=json, and never a token or a secret."""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from gunicorn.config import Config
from pydantic import SecretStr
from sqlalchemy import insert
from sqlalchemy.exc import OperationalError
from werkzeug.serving import make_server

from automation import create_app
from automation.config import Settings
from automation.dispatch import loop as dispatch
from automation.dispatch.tokens import exchange_code
from automation.errors import AutomationError
from automation.logs import (
    TEXT_FORMAT,
    GunicornLogger,
    JsonFormatter,
    MaskWebhookSecret,
    configure_logging,
)
from automation.store.database import make_engine
from automation.store.models import OAuthToken
from tests.fake_amocrm import CLIENT_ID, REDIRECT_URI, FakeAmoCRM

FORM = "application/x-www-form-urlencoded"
#: Loggers whose set-up a test here may change, restored after each test.
TOUCHED = ("", "automation", "werkzeug", "urllib3", "gunicorn.error", "gunicorn.access")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    saved = {}
    for name in TOUCHED:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, list(logger.filters), logger.propagate)
    yield
    for name, (handlers, level, filters, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
        logger.propagate = propagate


def record(message: str, *args: Any, name: str = "automation.test", **extra: Any) -> Any:
    made = logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


# ----------------------------------------------------------------------- format


def test_json_line_has_time_level_logger_message_and_the_extra_fields() -> None:
    line = json.loads(
        JsonFormatter().format(record("POST %s status=%s", "/x", 202, status=202, path="/x"))
    )

    assert set(line) == {"time", "level", "logger", "message", "status", "path"}
    assert (line["level"], line["logger"]) == ("warning", "automation.test")
    assert (line["message"], line["status"], line["path"]) == ("POST /x status=202", 202, "/x")
    assert line["time"].endswith("+00:00")


def test_json_line_carries_the_traceback_of_a_logged_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logged = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )

    line = json.loads(JsonFormatter().format(logged))

    assert line["exception"].startswith("Traceback (most recent call last)")
    assert line["exception"].endswith("ValueError: boom")


def test_log_format_json_makes_every_library_write_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json")

    logging.getLogger("automation.webhooks").info("webhook delivery=%s", 1)
    logging.getLogger("sqlalchemy.pool").warning("connection lost")
    GunicornLogger(Config()).info("Booting worker with pid: %s", 42)  # `automation serve`'s

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("automation.webhooks", "webhook delivery=1"),
        ("sqlalchemy.pool", "connection lost"),
        ("gunicorn.error", "Booting worker with pid: 42"),
    ]


def test_log_format_text_leaves_gunicorns_own_format_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("text")

    GunicornLogger(Config()).info("Booting worker with pid: %s", 42)

    assert capsys.readouterr().err.endswith("[INFO] Booting worker with pid: 42\n")


@pytest.mark.parametrize(
    ("message", "args", "shown"),
    [
        (
            "Exception on /webhooks/amocrm/s3cret/ [POST]",
            (),
            "Exception on /webhooks/amocrm/***/ [POST]",
        ),
        (
            '%s - - [%s] "%s" %s -',
            ("127.0.0.1", "date", "POST /webhooks/amocrm/s3cret HTTP/1.1", "200"),
            '127.0.0.1 - - [date] "POST /webhooks/amocrm/*** HTTP/1.1" 200 -',
        ),
        (
            '%(h)s "%(r)s" %(s)s',
            ({"h": "1.2.3.4", "r": "POST /webhooks/amocrm/s3cret?x=1", "s": "200"},),
            '1.2.3.4 "POST /webhooks/amocrm/***?x=1" 200',
        ),
        ("GET /healthz", (), "GET /healthz"),
    ],
)
def test_the_webhook_secret_is_masked_in_request_paths(
    message: str, args: tuple[Any, ...], shown: str
) -> None:
    logged = record(message, *args)

    assert MaskWebhookSecret().filter(logged) is True
    assert logged.getMessage() == shown


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("POST /webhooks%2Famocrm%2Fs3cret-x/ HTTP/1.1", "POST /webhooks%2Famocrm%2F***/ HTTP/1.1"),
        ("POST /webhooks/amocrm//s3cret-x/", "POST /webhooks/amocrm//***/"),
        ("POST /Webhooks/AMOCRM/s3cret-x/", "POST /Webhooks/AMOCRM/***/"),
        ("GET /healthz?token=s3cret-x&a=1", "GET /healthz?token=***&a=1"),
        ("GET /x/%73%33cret-x/", "GET /x/***/"),
        ("GET /x/%2573%2533cret-x/", "GET /x/***/"),
        ('referer "https://h/s3cret-x"', 'referer "https://h/***"'),
        ("GET /x/s3cret-xy/ s3cret-x.y", "GET /x/s3cret-xy/ s3cret-x.y"),  # not the secret
    ],
)
def test_the_secrets_value_is_masked_however_a_path_spells_it(message: str, shown: str) -> None:
    mask = MaskWebhookSecret()
    mask.remember("s3cret-x")
    logged = record(message)

    assert mask.filter(logged) is True
    assert logged.getMessage() == shown


# ----------------------------------------------------------------------- secrets


class Keep(logging.Handler):
    """Keeps every record it is given, at any level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def debug_everywhere(keep: Keep) -> None:
    """Every record at DEBUG, from every logger, reaches `keep`: the root logger and the
    loggers that do not propagate (ours) get it, and any level left unset by the app's
    own configuration is DEBUG (urllib3 and werkzeug are set to DEBUG explicitly)."""
    for name in ("", "automation", "urllib3", "werkzeug"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    for name in ("", "automation"):
        logging.getLogger(name).addHandler(keep)


def texts(record: logging.LogRecord) -> list[str]:
    """Everything a handler could write from `record`, formatted every way we format."""
    return [
        record.getMessage(),
        JsonFormatter().format(record),
        logging.Formatter(TEXT_FORMAT).format(record),
        repr(vars(record)),
    ]


class Secrets:
    """Distinct, recognisable values for every secret the server knows."""

    def __init__(self) -> None:
        self.webhook = f"whsec-{secrets.token_hex(8)}"
        self.access = f"env-access-{secrets.token_hex(8)}"
        self.refresh = f"env-refresh-{secrets.token_hex(8)}"
        self.client = f"client-secret-{secrets.token_hex(8)}"
        self.wrong_client = f"wrong-secret-{secrets.token_hex(8)}"
        self.code = f"auth-code-{secrets.token_hex(8)}"
        self.issued: list[str] = []  # tokens the fake amoCRM handed out

    def all(self) -> list[str]:
        fixed = [self.webhook, self.access, self.refresh, self.client, self.wrong_client]
        return [*fixed, self.code, *self.issued]


class Webhooks:
    """The app served by werkzeug's real server, posted to without client-side logs."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def post(self, secret: str, body: bytes, content_type: str = FORM) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.server_port, timeout=10)
        try:
            connection.request(
                "POST", f"/webhooks/amocrm/{secret}/", body, {"Content-Type": content_type}
            )
            return connection.getresponse().status
        finally:
            connection.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def lead_moved(lead_id: int) -> bytes:
    return urlencode(
        {
            "account[id]": "30112233",
            "leads[status][0][id]": str(lead_id),
            "leads[status][0][status_id]": "59936202",
        }
    ).encode()


def _webhook_flows(hooks: Webhooks, keys: Secrets, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hooks.post(keys.webhook, lead_moved(1)) == 200
    assert hooks.post("a-wrong-guess", lead_moved(1)) == 404
    assert hooks.post(keys.webhook, b"leads%5Badd=1") == 400
    assert hooks.post(keys.webhook, b"<xml/>", "text/xml") == 415
    with monkeypatch.context() as patch:
        patch.setattr("automation.web.webhooks.store", _broken_store)
        patch.setattr("automation.store.groupcommit.store", _broken_store)  # threaded server
        assert hooks.post(keys.webhook, lead_moved(2)) == 500  # Flask logs the path


def _broken_store(*args: Any) -> Any:
    raise RuntimeError("a bug in storing")


def _amocrm_flows(
    settings: Settings, fake: FakeAmoCRM, hooks: Webhooks, keys: Secrets, app: Any
) -> AutomationError:
    sessions = app.extensions["automation"].sessions
    fake.expire_token()  # the env token is refused: 401, refresh, resend
    assert dispatch.build(settings, sessions, read_timeout=2).run(once=True).sent == 1
    keys.issued += [fake.access_token, fake.refresh_token]
    exchange_code(settings, sessions, keys.code)
    keys.issued += [fake.access_token, fake.refresh_token]
    with pytest.raises(AutomationError) as refused:  # a code is single-use
        exchange_code(settings, sessions, keys.code)
    fake.expire_token()  # and now the refresh is refused: a wrong client secret
    assert hooks.post(keys.webhook, lead_moved(3)) == 200
    wrong = settings.model_copy(update={"amocrm_client_secret": SecretStr(keys.wrong_client)})
    assert dispatch.build(wrong, sessions, read_timeout=2).run(once=True).sent == 0
    return refused.value


def test_no_token_or_secret_reaches_any_log_record(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = Secrets()
    fake = FakeAmoCRM(
        access_token=keys.access,
        refresh_token=keys.refresh,
        client_secret=keys.client,
        auth_code=keys.code,
    ).start()
    settings = make_settings(
        webhook_secret=keys.webhook,
        amocrm_base_url=fake.url,
        amocrm_access_token=keys.access,
        amocrm_refresh_token=keys.refresh,
        amocrm_client_id=CLIENT_ID,
        amocrm_client_secret=keys.client,
        amocrm_redirect_uri=REDIRECT_URI,
        amocrm_max_rps=50,
        log_format="json",
    )
    app, keep = create_app(settings), Keep()
    debug_everywhere(keep)
    hooks = Webhooks(app)
    try:
        _webhook_flows(hooks, keys, monkeypatch)
        refused = _amocrm_flows(settings, fake, hooks, keys, app)
        scraped = app.test_client().get("/metrics").text
    finally:
        hooks.close()
        fake.stop()
        app.extensions["automation"].engine.dispose()

    names = {r.name for r in keep.records}
    assert {"werkzeug", "urllib3.connectionpool", "automation.amocrm", "automation"} <= names
    leaks = [
        (secret, r.name, text[:200])
        for r in keep.records
        for text in texts(r)
        for secret in keys.all()
        if secret in text
    ]
    assert leaks == []
    assert any("/webhooks/amocrm/***/" in r.getMessage() for r in keep.records)
    assert any(r.getMessage().startswith("token refresh failed") for r in keep.records)
    assert [secret for secret in keys.all() if secret in str(refused) + scraped] == []


def test_a_database_error_does_not_quote_the_values_it_was_writing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nothing-migrated.db'}")
    token, now = f"at-{secrets.token_hex(8)}", datetime.now(UTC)
    try:
        with pytest.raises(OperationalError) as failed, engine.begin() as connection:
            connection.execute(insert(OAuthToken).values(id=1, access_token=token, updated_at=now))
    finally:
        engine.dispose()

    assert "[SQL parameters hidden due to hide_parameters=True]" in str(failed.value)
    assert token not in str(failed.value)


# ------------------------------------------------- the secret in a real server's logs


def spellings(secret: str) -> list[bytes]:
    """Requests that name the secret in ways the path-segment mask alone missed."""
    encoded = "".join(f"%{byte:02X}" for byte in secret.encode())
    body = lead_moved(7)
    headers = f"Host: x\r\nContent-Type: {FORM}\r\nContent-Length: {len(body)}\r\n"
    paths = [
        f"/webhooks%2Famocrm%2F{secret}/",  # werkzeug routes it: answered 200
        f"/webhooks/amocrm//{secret}/",
        f"/Webhooks/amocrm/{secret}/",
        f"/webhooks/amocrm/{encoded}/",
        f"/webhooks/amocrm/{secret}/?again={secret}",
        f"/healthz?token={secret}",
        f"/webhooks%252Famocrm%252F{secret}/",
    ]
    requests = [
        f"POST {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode() + body
        for path in paths
    ]
    garbled = f"POST /webhooks/amocrm/{secret}/ HTTP/1.1\r\nBad\x00Header: 1\r\n\r\n"
    return [*requests, garbled.encode()]


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(("--access-logfile", "-", "--log-level", "debug"), id="gunicorn"),
        pytest.param(None, id="automation serve"),
    ],
)
def test_the_webhook_secret_never_reaches_a_real_servers_logs(
    how: tuple[str, ...] | None, database_url: str, rules_file: Path, tmp_path: Path
) -> None:
    from tests.gunicorn import gunicorn, raw_exchange, running, serve, server_env, status_of

    secret = f"whsec-{secrets.token_hex(8)}"
    env = server_env(database_url, rules_file, WEBHOOK_SECRET=secret, LOG_FORMAT="text")
    command = serve("--workers", "1") if how is None else gunicorn("-w", "1", *how)
    with running(command, env, tmp_path / "server.log") as server:
        statuses = [status_of(raw_exchange(server.port, sent)) for sent in spellings(secret)]
        server.stop()
        log = server.log()

    assert statuses[0] == 200
    encoded = "".join(f"%{byte:02X}" for byte in secret.encode())
    assert [line for line in log.splitlines() if secret in line or encoded in line] == []
    assert "/webhooks/amocrm/***" in log or how is None
