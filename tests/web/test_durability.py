"""Every webhook answered 200 is stored, whatever happens to the server: `automation
serve` (gthread workers and their committers) killed with SIGKILL or stopped with
SIGTERM under load, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from automation.store.database import make_engine
from automation.store.models import Launch
from tests.gunicorn import FORM, Server, running, serve, server_env

CLIENTS = 6


def lead_moved(lead_id: int) -> bytes:
    return (
        f"account[id]=30112233&leads[status][0][id]={lead_id}&leads[status][0][status_id]=59936202"
    ).encode()


class Load:
    """Clients posting webhooks of distinct leads until told to stop or refused."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/webhooks/amocrm/s3cret/"
        self.answered: set[int] = set()
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, args=(1_000_000 * (n + 1),))
            for n in range(CLIENTS)
        ]
        for thread in self.threads:
            thread.start()

    def _client(self, first: int) -> None:
        with requests.Session() as session:
            for lead in range(first, first + 1_000_000):
                if self.stopped.is_set():
                    return
                try:
                    answer = session.post(
                        self.url, data=lead_moved(lead), headers={"Content-Type": FORM}, timeout=10
                    )
                except requests.RequestException:
                    time.sleep(0.05)  # the server is gone or going: keep trying until stopped
                    continue
                if answer.status_code == 200:
                    self.answered.add(lead)

    def wait_answered(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.answered) < count:
            assert time.monotonic() < deadline, f"only {len(self.answered)} answered"
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)


def stored_leads(database_url: str) -> set[int]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(connection.scalars(select(Launch.entity_id)))
    finally:
        engine.dispose()


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def server(database_url: str, rules_file: Path, tmp_path: Path) -> Iterator[Server]:
    command = serve("--workers", "2", "--threads", "8")
    with running(command, server_env(database_url, rules_file), tmp_path / "server.log") as up:
        yield up


def test_every_webhook_answered_before_a_sigkill_is_stored(
    server: Server, database_url: str
) -> None:
    load = Load(server.url)
    try:
        load.wait_answered(200)
        workers = children(server.process.pid)
        for pid in [*workers, server.process.pid]:
            os.kill(pid, signal.SIGKILL)
        server.process.wait(10)
    finally:
        load.stop()

    answered = set(load.answered)
    assert len(answered) >= 200
    assert answered - stored_leads(database_url) == set()


def test_sigterm_under_load_stops_cleanly_with_every_answered_webhook_stored(
    server: Server, database_url: str
) -> None:
    load = Load(server.url)
    try:
        load.wait_answered(200)
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(60)
    finally:
        load.stop()

    assert returncode == 0, server.log()
    assert "Traceback" not in server.log()
    assert set(load.answered) - stored_leads(database_url) == set()
