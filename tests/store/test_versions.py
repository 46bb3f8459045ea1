"""Rules versions: one row per distinct content, recorded at load, never per webhook."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from automation.rules.load import load_rules
from automation.store.database import make_engine
from automation.store.models import Delivery, Launch, RulesVersion
from automation.store.versions import get_version, record_version
from tests.conftest import TEST_RULES

NOW = datetime(2026, 12, 6, 22, 0, tzinfo=UTC)


def versions(sessions: sessionmaker[Session]) -> list[RulesVersion]:
    with sessions() as session:
        return list(session.scalars(select(RulesVersion).order_by(RulesVersion.id)))


def test_the_same_content_is_stored_once_with_its_text_path_and_first_load(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    engine = make_engine(database_url)
    rules = load_rules(TEST_RULES, "/srv/rules.yaml")
    first = record_version(engine, rules, NOW)
    again = record_version(engine, load_rules(TEST_RULES, "/elsewhere.yaml"), datetime.now(UTC))
    engine.dispose()

    assert again == first
    [row] = versions(sessions)
    assert (row.content_hash, row.text, row.path) == (rules.content_hash, TEST_RULES, first.path)
    assert row.path == "/srv/rules.yaml" and row.first_loaded_at == NOW
    with sessions() as session:
        assert get_version(session, first.id) == first
        assert get_version(session, first.id + 1) is None


def test_two_servers_loading_one_file_at_once_share_one_row(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    rules = load_rules(TEST_RULES)
    engines = [make_engine(database_url) for _ in range(4)]
    found: list[int] = []
    start = threading.Barrier(len(engines))

    def load(index: int) -> None:
        start.wait()
        found.append(record_version(engines[index], rules, NOW).id)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for engine in engines:
        engine.dispose()

    assert len(found) == len(engines) and len(set(found)) == 1
    assert len(versions(sessions)) == 1


def test_the_server_records_its_rules_at_start_and_at_reload_not_per_webhook(
    make_app: Callable[[Any], Any],
    settings: Any,
    rules_file: Path,
    sessions: sessionmaker[Session],
    webhook_body: Callable[[str], bytes],
) -> None:
    app = make_app(settings)
    client = app.test_client()
    [started] = versions(sessions)
    for _ in range(3):
        client.post(
            "/webhooks/amocrm/s3cret",
            data=webhook_body("status_lead"),
            content_type="application/x-www-form-urlencoded",
        )
    assert len(versions(sessions)) == 1

    rules_file.write_text(TEST_RULES.replace("bot_id: 101", "bot_id: 111"))
    app.extensions["automation"].rules.reload()
    assert len(versions(sessions)) == 2  # recorded at reload, before any webhook
    client.post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("add_talk"),
        content_type="application/x-www-form-urlencoded",
    )

    edited = versions(sessions)[1]
    with sessions() as session:
        judged = list(session.scalars(select(Delivery.rules_version_id).order_by(Delivery.id)))
        launched = list(session.scalars(select(Launch.rules_version_id).order_by(Launch.id)))
        assert session.scalar(select(func.count()).select_from(RulesVersion)) == 2
    assert judged == [started.id, started.id, started.id, edited.id]
    assert launched == [started.id, edited.id]  # two copies of one change: one launch
