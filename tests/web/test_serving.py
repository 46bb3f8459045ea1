"""The app as a real gunicorn process on loopback: every fixture over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from automation.store.database import make_engine
from automation.store.models import Delivery, Launch

ROOT = Path(__file__).resolve().parents[2]
WEBHOOKS = Path(__file__).parents[1] / "fixtures" / "webhooks"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or a worker still booting
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def server_env(database_url: str, rules_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_")}
    env.update(DATABASE_URL=database_url, RULES_FILE=str(rules_file), WEBHOOK_SECRET="s3cret")
    return env


def server_command(kind: str, port: int) -> list[str]:
    """Two workers on `port`, as plain gunicorn or as `automation serve`."""
    bind = f"127.0.0.1:{port}"
    if kind == "gunicorn":
        return [str(BIN / "gunicorn"), "-w", "2", "-b", bind, "wsgi:app"]
    return [str(BIN / "automation"), "serve", "--bind", bind, "--workers", "2"]


@contextmanager
def serving(kind: str, env: dict[str, str]) -> Iterator[str]:
    """A `server_command` started in the checkout: its URL once healthy; terminated
    afterwards."""
    port = free_port()
    process = subprocess.Popen(server_command(kind, port), cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(15)


def post_fixture(url: str, path: Path, timeout: float) -> Any:
    """Post a webhook fixture file as amoCRM would; its JSON answer, which must be 200."""
    answer = requests.post(
        f"{url}/webhooks/amocrm/s3cret/",
        data=path.read_bytes().strip(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=timeout,
    )
    assert answer.status_code == 200, (path.name, answer.text)
    return answer.json()


@pytest.fixture(params=["gunicorn", "automation serve"])
def server(request: pytest.FixtureRequest, database_url: str, rules_file: Path) -> Iterator[str]:
    with serving(request.param, server_env(database_url, rules_file)) as url:
        yield url


def test_every_webhook_fixture_posted_over_http_is_stored(server: str, database_url: str) -> None:
    fixtures = sorted(WEBHOOKS.glob("*.form"))
    answers = {path.stem: post_fixture(server, path, timeout=5) for path in fixtures}

    engine = make_engine(database_url)
    with engine.connect() as connection:
        deliveries = connection.execute(select(Delivery.id, Delivery.body)).all()
        launches = connection.execute(select(Launch.rule, Launch.entity_id)).all()
    engine.dispose()
    assert sorted(body for _, body in deliveries) == sorted(
        p.read_bytes().strip() for p in fixtures
    )
    assert sorted(launches) == [
        ("first-message", 93589657),
        ("new-chat", 93589657),
        ("qualified", 27754599),
    ]
    assert answers["status_lead"]["launches"] == 1
    assert answers["add_contact"]["launches"] == 0


@pytest.fixture
def example_server(database_url: str) -> Iterator[str]:
    """gunicorn with two workers serving the example rules.yaml of the repository."""
    with serving("gunicorn", server_env(database_url, ROOT / "rules.yaml")) as url:
        yield url


def test_a_customers_first_message_starts_one_bot_with_the_example_rules(
    example_server: str, database_url: str
) -> None:
    """talk.added and message.added posted at once, to two workers: at night both
    example chat rules fire, and one of them yields; by day only the greeting fires."""

    def post(name: str) -> int:
        return int(post_fixture(example_server, WEBHOOKS / f"{name}.form", timeout=10)["launches"])

    with ThreadPoolExecutor(2) as pool:
        launches = list(pool.map(post, ["add_talk", "add_message"]))

    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(Launch.rule, Launch.status, Launch.reason)).all()
    engine.dispose()
    started = [row for row in rows if row.status.value != "skipped"]
    assert sum(launches) == len(started) == 1
    assert all(
        row.reason.startswith("busy: yielded to launch #") for row in rows if row not in started
    )


# ------------------------------------------------------- starting and stopping cleanly


def serve_env(tmp_path: Path, rules_file: Path) -> dict[str, str]:
    return server_env(f"sqlite:///{tmp_path / 'automation.db'}", rules_file)


def test_serve_on_a_busy_port_ends_with_the_real_cause(tmp_path: Path, rules_file: Path) -> None:
    """No "serving on" before gunicorn listens, and no dispatcher (which, next to the
    server already there, would end with "another dispatcher runs…")."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [str(BIN / "automation"), "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env=serve_env(tmp_path, rules_file),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert done.returncode != 0
    assert "serving on" not in done.stdout
    assert "dispatcher" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f"Can't connect to ('127.0.0.1', {port})")


def test_the_dispatcher_of_a_killed_server_stops_too(tmp_path: Path, rules_file: Path) -> None:
    """SIGKILL of `serve` (the OOM killer, `kill -9`) gives its finally no chance to stop
    the dispatcher it started. The chaos run found it carrying on alone, and a server
    started again then waited forever behind it on SQLite; it must stop by itself."""
    from tests.gunicorn import children_of, command_line, free_port, wait_gone

    port = free_port()
    argv = [str(BIN / "automation"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    output = tmp_path / "serve.log"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            argv, cwd=tmp_path, env=serve_env(tmp_path, rules_file), stdout=sink, stderr=sink
        )
    dispatcher = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, 60)
        deadline = time.monotonic() + 30
        while dispatcher is None and time.monotonic() < deadline:
            found = [pid for pid in children_of(server.pid) if "dispatch" in command_line(pid)]
            dispatcher = found[0] if found else None
            time.sleep(0.1)
        assert dispatcher is not None, "serve started no dispatcher"
        while "dispatcher started" not in output.read_text():
            time.sleep(0.1)
        server.kill()
        server.wait(10)

        assert wait_gone([dispatcher], 30), "the dispatcher outlived the server that started it"
    finally:
        server.kill()
        server.wait(10)
        if dispatcher is not None and not wait_gone([dispatcher], 0):
            os.kill(dispatcher, signal.SIGKILL)
    assert f"the server that started this dispatcher (pid {server.pid}) is gone" in (
        output.read_text()
    )


def test_serve_starts_its_dispatcher_again_when_it_dies(tmp_path: Path, rules_file: Path) -> None:
    """A dispatcher killed under `serve` (the OOM killer, a stray `kill -9`) left the web
    server answering 200 while launches piled up unsent. `serve` starts another, says
    so, and on SIGTERM stops the one it runs and starts no more. (On SQLite the new one
    waits out DISPATCHER_DEAD_AFTER before it takes over from the dead one's row.)"""
    from tests.gunicorn import children_of, command_line, free_port, wait_gone

    port = free_port()
    argv = [str(BIN / "automation"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    output = tmp_path / "serve.log"

    def dispatchers(at_least: int) -> list[int]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [pid for pid in children_of(server.pid) if "dispatch" in command_line(pid)]
            if output.read_text().count("dispatcher started") >= at_least and found:
                return found
            assert server.poll() is None, output.read_text()
            time.sleep(0.1)
        raise AssertionError(f"no dispatcher #{at_least}:\n{output.read_text()}")

    with output.open("wb") as sink:
        env = serve_env(tmp_path, rules_file) | {"DISPATCHER_DEAD_AFTER": "2"}
        server = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=sink, stderr=sink)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, 60)
        [first] = dispatchers(1)
        os.kill(first, signal.SIGKILL)
        [second] = dispatchers(2)
        assert second != first
        server.terminate()
        server.wait(60)
        assert wait_gone([second], 30), "the restarted dispatcher outlived the server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    log = output.read_text()
    # Its status is gunicorn's if gunicorn's reaper (which waits for any child) was first:
    assert re.search(
        rf"the dispatcher \(pid {first}\) exited (with code -9|for a reason unknown) after ", log
    )
    assert "starting the dispatcher again in 1 s (quick exit #1)" in log
    assert log.count("dispatcher started") == 2, log
    assert f"the dispatcher (pid {second}) exited" not in log


def test_ctrl_c_stops_serve_and_its_dispatcher_quietly(tmp_path: Path, rules_file: Path) -> None:
    """Ctrl-C in a terminal (and systemd's stop) signals the whole process group, so the
    dispatcher stops before `serve` stops it; that is no crash: no ERROR, no restart.
    And no gunicorn control socket: one path for every gunicorn on the host."""
    from tests.gunicorn import children_of, command_line, free_port, wait_gone

    port = free_port()
    argv = [str(BIN / "automation"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    output = tmp_path / "serve.log"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=serve_env(tmp_path, rules_file),
            stdout=sink,
            stderr=sink,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, 60)
        while "dispatcher started" not in output.read_text():
            assert server.poll() is None, output.read_text()
            time.sleep(0.1)
        family = children_of(server.pid)
        assert any("dispatch" in command_line(pid) for pid in family)
        os.killpg(server.pid, signal.SIGINT)
        assert server.wait(60) == 0, output.read_text()
        assert wait_gone(family, 30), "a child outlived serve"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    log = output.read_text()
    assert "dispatcher stopped" in log
    assert " ERROR " not in log and "again" not in log, log
    assert "Control socket" not in log


def test_a_dispatcher_stopped_while_waiting_for_another_exits_quietly(
    tmp_path: Path, rules_file: Path
) -> None:
    """SQLite allows one dispatcher; a second one says so and waits. SIGTERM while it
    waits is an ordinary stop (exit 0), not an error."""
    env = serve_env(tmp_path, rules_file)
    command = [str(BIN / "automation"), "dispatch"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert first.stderr is not None
        while "dispatcher started" not in first.stderr.readline():
            assert first.poll() is None, "the first dispatcher exited"
        second = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert second.stderr is not None
        said = ""
        while "Waiting for it to stop" not in said:
            assert second.poll() is None, "the second dispatcher exited"
            said = second.stderr.readline()
        # How long a killed one holds it up, since it cannot say it stopped:
        assert "or for its heartbeat to be older than DISPATCHER_DEAD_AFTER=30s" in said
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=30)
    finally:
        for process in (first, second):
            if process is not None:
                if process.poll() is None:
                    process.terminate()
                process.communicate(timeout=15)  # also closes the pipes

    assert second.returncode == 0, err
    assert out == "stopped while waiting for the other dispatcher on this SQLite database\n"
    assert "Error" not in err


# ------------------------------------------------- gunicorn's own answers, as JSON


MALFORMED = {
    "a NUL in a header": b"POST /webhooks/amocrm/s3cret/ HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "a negative Content-Length": (
        b"POST /webhooks/amocrm/s3cret/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
    ),
    "a garbled request line": b"POST\x01 / HTTP/1.1\r\nHost: x\r\n\r\n",
    "a URI over 4094 bytes": b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "a header over 8190 bytes (431)": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    ),
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_gunicorns_answers_to_malformed_http_are_json(
    request_bytes: bytes, tmp_path: Path, rules_file: Path
) -> None:
    from tests.gunicorn import raw_exchange, running, serve, status_of

    env = server_env(f"sqlite:///{tmp_path / 'automation.db'}", rules_file)
    with running(serve("--workers", "1"), env, tmp_path / "server.log") as started:
        answer = raw_exchange(started.port, request_bytes)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert 400 <= status_of(answer) < 500, answer
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]
