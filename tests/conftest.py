"""Shared pytest fixtures.

The process environment must not leak into tests: a developer's `AMOCRM_ACCESS_TOKEN`
or `DATABASE_URL` would change what the code under test does.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.store.database import make_engine, make_session_factory, upgrade
from automation.store.models import Base
from tests.postgres import scratch_database

for _name in list(os.environ):
    if _name.startswith("AMOCRM_") or _name in {
        "DATABASE_URL",
        "RULES_FILE",
        "WEBHOOK_SECRET",
        "DRY_RUN",
        "ADMIN_TOKEN",
        "MAX_BODY_BYTES",
        "LOG_FORMAT",
        "GROUP_COMMIT",
        "RETENTION_DAYS",
        "VIEWER_TOKEN",
        "DISPLAY_TIMEZONE",
        "CONSOLE_SESSION_HOURS",
        "CONSOLE_SECURE_COOKIE",
        "CONSOLE_PROXY_HOPS",
    }:
        del os.environ[_name]

FIXTURES = Path(__file__).parent / "fixtures"
WEBHOOKS = FIXTURES / "webhooks"


def incoming_message(message_id: str) -> bytes:
    """A chat message from contact 93589657 about lead 27754620, as amoCRM posts it;
    TEST_RULES' `first-message` rule launches on it with a 1h cooldown."""
    return urlencode(
        {
            "account[id]": "30112233",
            "message[add][0][id]": message_id,
            "message[add][0][contact_id]": "93589657",
            "message[add][0][entity_type]": "lead",
            "message[add][0][entity_id]": "27754620",
            "message[add][0][type]": "incoming",
        }
    ).encode()


@pytest.fixture
def webhook_body() -> object:
    """Read a webhook fixture by setting name: `webhook_body("status_lead")`."""

    def read(name: str) -> bytes:
        return (WEBHOOKS / f"{name}.form").read_bytes().strip()

    return read


# ------------------------------------------------------------------------- databases
#
# Every database test runs on SQLite and, when TEST_DATABASE_URL is set, on PostgreSQL
# too. Each session migrates a database of its own once (with Alembic, never
# create_all); each test then starts from empty tables. On PostgreSQL the session
# creates a fresh database and drops it at the end: the server keeps what earlier runs
# left.

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_database() -> Iterator[str]:
    admin_url = os.environ.get("TEST_DATABASE_URL")
    if not admin_url:
        pytest.skip("TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    with scratch_database(admin_url, "automation_test") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "automation.db"
        shutil.copy(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("_postgres_database")
    engine = make_engine(url)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


TEST_RULES = """\
version: 1
rules:
  - name: qualified
    on: lead.status_changed
    when:
      status_id: 59936202
    launch: {bot_id: 101, entity: lead}
  - name: new-chat
    on: talk.added
    launch: {bot_id: 202, entity: contact}
  - name: first-message
    on: message.added
    cooldown: 1h
    launch: {bot_id: 303, entity: contact}
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(TEST_RULES)
    return path


@pytest.fixture
def make_settings(database_url: str, rules_file: Path) -> Callable[..., Settings]:
    """Settings for one test: this test's database and rules, a known secret."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "rules_file": str(rules_file),
            "webhook_secret": "s3cret",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on this test's database."""
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def fake() -> Iterator[Any]:
    """The fake amoCRM on loopback (tests/fake_amocrm.py)."""
    from tests.fake_amocrm import FakeAmoCRM

    with FakeAmoCRM() as server:
        yield server


@pytest.fixture
def make_app() -> Iterator[Callable[[Settings], Any]]:
    """Build apps from settings; their database connections are closed afterwards."""
    from automation import create_app

    built: list[Any] = []

    def build(settings: Settings) -> Any:
        application = create_app(settings)
        application.config["TESTING"] = True
        built.append(application)
        return application

    yield build
    for application in built:
        application.extensions["automation"].engine.dispose()


@pytest.fixture
def app(make_app: Callable[[Settings], Any], settings: Settings) -> Any:
    return make_app(settings)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


class FakeClock:
    """A monotonic clock the test moves by hand (the rules loader's re-read interval)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
