"""Webhook bodies that do not arrive as declared, through real gunicorn: the short
body gunicorn hands over as if whole, and chunked framing gunicorn cannot parse."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gunicorn import (
    FORM,
    Server,
    gunicorn,
    raw_exchange,
    running,
    serve,
    server_env,
    status_of,
    stored_bodies,
)


def many_leads(count: int) -> bytes:
    fields = ["account[id]=30112233", "account[subdomain]=mybrand"]
    for index in range(count):
        fields += [
            f"leads[status][{index}][id]={27754599 + index}",
            f"leads[status][{index}][status_id]=59936202",
        ]
    return "&".join(fields).encode()


def head(length: int | None = None, *, chunked: bool = False) -> bytes:
    lines = [
        b"POST /webhooks/amocrm/s3cret/ HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: " + FORM.encode(),
        b"Connection: close",
    ]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.fixture(params=["gunicorn", "automation serve"])
def server(
    request: pytest.FixtureRequest, database_url: str, rules_file: Path, tmp_path: Path
) -> Iterator[Server]:
    command = gunicorn("-w", "1") if request.param == "gunicorn" else serve("--workers", "1")
    env = server_env(database_url, rules_file)
    with running(command, env, tmp_path / "server.log") as started:
        yield started


def test_a_body_shorter_than_its_content_length_gets_400_and_nothing_is_stored(
    server: Server, database_url: str
) -> None:
    """The chaos run's case: 954 bytes declared, 460 sent, then the client half-closed;
    the part that arrived is a valid webhook of fewer leads."""
    body = many_leads(12)
    sent = body[: len(body) // 2]
    sent = sent[: sent.rindex(b"&")]  # cut between fields: what arrived decodes cleanly

    answer = raw_exchange(server.port, head(len(body)) + sent)

    assert status_of(answer) == 400, answer
    assert b"Content-Length" in answer
    assert stored_bodies(database_url) == []
    assert f"webhook rejected status=400 remote=127.0.0.1 length={len(body)}" in server.log()


def test_a_body_as_long_as_its_content_length_is_stored(server: Server, database_url: str) -> None:
    body = many_leads(12)

    answer = raw_exchange(server.port, head(len(body)) + body)

    assert status_of(answer) == 200, answer
    assert stored_bodies(database_url) == [body]


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"zz\r\nabc\r\n0\r\n\r\n", id="invalid chunk size"),
        pytest.param(b"5\r\naccou", id="cut off inside a chunk"),
        pytest.param(b"5\r\naccountXX0\r\n\r\n", id="chunk without its CRLF"),
    ],
)
def test_chunked_framing_gunicorn_cannot_parse_gets_400_not_500(
    server: Server, database_url: str, framing: bytes
) -> None:
    answer = raw_exchange(server.port, head(chunked=True) + framing)

    assert status_of(answer) == 400, answer
    assert b"nothing was stored" in answer
    assert stored_bodies(database_url) == []
    assert "Traceback" not in server.log()


# ------------------------------------------------------------ slow uploads, deadline


def slow_upload(port: int) -> socket.socket:
    """A client that declares 1000 bytes, sends 10 and stalls (the chaos run's case)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head(1000) + b"account[id")
    return sock


def nothing_answered_yet(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # an answer, or the end of the connection
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def test_slow_uploads_hold_threads_and_good_webhooks_are_answered_meanwhile(
    database_url: str, rules_file: Path, tmp_path: Path
) -> None:
    """Four stalled uploads against 2 workers: under sync workers each held a worker
    until gunicorn's 30 s timeout; now each holds a thread until the body deadline."""
    env = server_env(database_url, rules_file)
    with running(serve("--workers", "2"), env, tmp_path / "server.log") as server:
        stalled = [slow_upload(server.port) for _ in range(4)]
        try:
            answers = [
                raw_exchange(server.port, head(len(many_leads(1))) + many_leads(1))
                for _ in range(5)
            ]
            pending = [nothing_answered_yet(sock) for sock in stalled]
            late = [sock.makefile("rb").read() for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()

    assert [status_of(answer) for answer in answers] == [200] * 5
    assert pending == [True] * 4  # the good ones did not wait for the stalled ones
    assert [status_of(answer) for answer in late] == [408] * 4
    assert b"did not arrive within" in late[0]
    assert len(stored_bodies(database_url)) == 5
