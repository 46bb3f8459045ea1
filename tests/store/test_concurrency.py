"""Eight copies of one webhook stored at the same instant still give one launch.

The unique dedupe key in the database decides, not a read-then-write check: run the
real enqueue path from 8 threads and from 8 processes, released by a barrier.
"""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from automation.events.payloads import decode_body
from automation.rules.load import load_rules_file
from automation.store.database import make_engine, make_session_factory
from automation.store.intake import Inbound, Rows, store
from automation.store.models import Delivery, Launch
from tests.conftest import incoming_message

COPIES = 8


def _deliver(url: str, rules_path: str, body: bytes, barrier: object) -> int:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    rules = load_rules_file(rules_path)
    now = datetime.now(UTC)
    payload = decode_body(body, received_at=now)
    planned = rules.plan(payload.events, now)
    barrier.wait()  # type: ignore[attr-defined]
    with sessions.begin() as session:
        inbound = Inbound(body, "form", None, now, payload)
        added = store(session.connection(), Rows.of(inbound, planned)).launches
    engine.dispose()
    return added


def _count(url: str) -> tuple[int, int]:
    engine = make_engine(url)
    with engine.connect() as connection:
        launches = connection.scalar(select(func.count()).select_from(Launch))
        deliveries = connection.scalar(select(func.count()).select_from(Delivery))
    engine.dispose()
    return int(launches or 0), int(deliveries or 0)


def test_eight_threads_storing_the_same_webhook_add_one_launch(
    database_url: str, rules_file: Path, webhook_body: object
) -> None:
    body = webhook_body("status_lead")  # type: ignore[operator]
    barrier = threading.Barrier(COPIES)
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(_deliver(database_url, str(rules_file), body, barrier))
        )
        for _ in range(COPIES)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(results) == [0] * (COPIES - 1) + [1]
    assert _count(database_url) == (1, COPIES)


def test_eight_processes_storing_the_same_webhook_add_one_launch(
    database_url: str, rules_file: Path, webhook_body: object
) -> None:
    body = webhook_body("status_lead")  # type: ignore[operator]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(COPIES)
        with context.Pool(COPIES) as pool:
            results = pool.starmap(
                _deliver, [(database_url, str(rules_file), body, barrier)] * COPIES
            )

    assert sorted(results) == [0] * (COPIES - 1) + [1]
    assert _count(database_url) == (1, COPIES)


def test_eight_different_messages_of_one_contact_at_once_respect_the_cooldown(
    database_url: str, rules_file: Path
) -> None:
    """Different changes, so no dedupe key is shared: only the cooldown (1h on
    `first-message`) may stop seven of them, even when all arrive at the same instant."""
    barrier = threading.Barrier(COPIES)
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                _deliver(database_url, str(rules_file), incoming_message(f"m-{i}"), barrier)
            )
        )
        for i in range(COPIES)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    engine = make_engine(database_url)
    with engine.connect() as connection:
        statuses = sorted(connection.scalars(select(Launch.status)))
    engine.dispose()
    assert sorted(results) == [0] * (COPIES - 1) + [1]
    assert [status.value for status in statuses] == ["pending"] + ["skipped"] * (COPIES - 1)


#: Eight rules files, each starting its own bot on a customer's chat message.
ONE_BOT_RULES = """\
version: 1
rules:
  - name: bot-{i}
    on: message.added
    launch: {{bot_id: {bot}, entity: {entity}}}
"""


def test_eight_webhooks_about_one_chat_on_eight_processes_start_one_bot(
    database_url: str, tmp_path: Path
) -> None:
    """Eight workers (or hosts), each with a different bot for the same chat, half on
    its lead and half on its contact; all released at once. No dedupe key or cooldown
    is shared: only the one-bot-per-chat guard, under its lock, may stop seven."""
    paths = []
    for i in range(COPIES):
        path = tmp_path / f"rules-{i}.yaml"
        entity = "lead" if i % 2 else "contact"
        path.write_text(ONE_BOT_RULES.format(i=i, bot=500 + i, entity=entity))
        paths.append(str(path))
    bodies = [incoming_message(f"m-{i}") for i in range(COPIES)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(COPIES)
        with context.Pool(COPIES) as pool:
            arguments = [(database_url, paths[i], bodies[i], barrier) for i in range(COPIES)]
            results = pool.starmap(_deliver, arguments)

    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(Launch.status, Launch.reason)).all()
    engine.dispose()
    assert sorted(results) == [0] * (COPIES - 1) + [1]
    assert sorted(row.status.value for row in rows) == ["pending"] + ["skipped"] * (COPIES - 1)
    assert all(row.reason.startswith("busy: yielded to launch #") for row in rows if row.reason)
