"""Chunked webhook bodies (no Content-Length): stored whole, or refused whole.

Werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without an error. Cut in
the middle of `leads[status][5][id]=27754599`, such a body would decode as a shorter,
valid webhook: lead 2775 instead of 27754599, and the events after it gone. So a body
over MAX_BODY_BYTES must be a 413 whether or not it says its length up front.
"""

from __future__ import annotations

import io
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from automation.store.database import make_engine
from automation.store.models import Delivery
from tests.gunicorn import gunicorn, running, server_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LIMIT = 2000
FORM = "application/x-www-form-urlencoded"


def chunks(body: bytes, size: int = 300) -> Iterator[bytes]:
    """A generator body: `requests` sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post_chunked(server: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{server}/webhooks/amocrm/s3cret/",
        data=chunks(body),
        headers={"Content-Type": FORM},
        timeout=10,
    )


def stored_bodies(database_url: str) -> list[bytes]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(select(Delivery.body).order_by(Delivery.id)))
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(database_url: str, rules_file: Path, tmp_path: Path) -> Iterator[str]:
    """gunicorn with MAX_BODY_BYTES=2000, the way amoCRM (or a proxy) would meet it."""
    env = server_env(database_url, rules_file, MAX_BODY_BYTES=str(LIMIT))
    with running(gunicorn("-w", "1"), env, tmp_path / "server.log") as started:
        yield started.url


def many_leads(count: int) -> bytes:
    fields = ["account[id]=30112233", "account[subdomain]=mybrand"]
    for index in range(count):
        fields += [
            f"leads[status][{index}][id]={27754599 + index}",
            f"leads[status][{index}][status_id]=59936202",
            f"leads[status][{index}][old_status_id]=59936198",
        ]
    return "&".join(fields).encode()


def test_a_chunked_body_over_the_limit_gets_413_and_nothing_is_stored(
    server: str, database_url: str
) -> None:
    body = many_leads(30)
    assert len(body) > LIMIT

    answer = post_chunked(server, body)

    assert answer.status_code == 413, answer.text
    assert f"MAX_BODY_BYTES={LIMIT}" in answer.json()["error"]
    assert stored_bodies(database_url) == []


def test_a_chunked_body_under_the_limit_is_stored_whole(server: str, database_url: str) -> None:
    body = many_leads(5)
    assert len(body) < LIMIT

    answer = post_chunked(server, body)

    assert answer.status_code == 200, answer.text
    assert answer.json()["events"] == 5
    assert stored_bodies(database_url) == [body]


def exactly(size: int) -> bytes:
    """A valid webhook form of `size` bytes (padded with a field we do not know)."""
    head = b"account[id]=30112233&account[subdomain]=mybrand&pad="
    return head + b"x" * (size - len(head))


@pytest.mark.parametrize(("size", "status"), [(LIMIT, 200), (LIMIT + 1, 413), (LIMIT * 5, 413)])
def test_the_app_in_process_keeps_the_same_limit(
    size: int, status: int, make_settings: Callable[..., Any], make_app: Callable[[Any], Any]
) -> None:
    """Without gunicorn: exactly MAX_BODY_BYTES is stored, a byte more is refused."""
    app = make_app(make_settings(max_body_bytes=LIMIT))

    answer = app.test_client().post(
        "/webhooks/amocrm/s3cret",
        input_stream=io.BytesIO(exactly(size)),
        headers={"Transfer-Encoding": "chunked", "Content-Type": FORM},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn says of chunked
    )

    assert answer.status_code == status, answer.json
    with app.extensions["automation"].sessions() as session:
        count = session.scalar(select(func.count()).select_from(Delivery))
    assert count == (1 if status == 200 else 0)
