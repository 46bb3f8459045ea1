"""What `automation serve`, `automation dispatch` and plain gunicorn write, as the real
processes on loopback: the start banner, the start-up warnings said once per server,
and with LOG_FORMAT=json nothing but JSON lines on stdout and stderr.

Each test keeps a process's whole output in files and reads them once it has stopped,
so that every line it wrote, to the last one, is looked at.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cli.script import run_script

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WEBHOOK = (Path(__file__).parents[1] / "fixtures" / "webhooks" / "status_lead.form").read_bytes()
SECRET = "abcdefghijklmnopqrstuvwx"  # 24 characters: no "too short" warning


@dataclass
class Output:
    """What a stopped process wrote."""

    stdout: str
    stderr: str
    #: Where the running process writes them.
    files: tuple[Path, ...] = ()

    def wait_for(self, text: str, process: subprocess.Popen[bytes]) -> None:
        """Until the running process has written `text`."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(text in path.read_text(errors="replace") for path in self.files):
                return
            assert process.poll() is None, f"exited with {process.returncode} before {text!r}"
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never came")

    @property
    def lines(self) -> list[str]:
        return [line for line in (self.stdout + self.stderr).splitlines() if line.strip()]

    def json_lines(self) -> list[dict[str, Any]]:
        """Every line parsed as one JSON object; a line that is not fails with its text."""
        parsed = []
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\n--- output:\n{self.stdout}{self.stderr}")
            assert isinstance(record, dict), line
            parsed.append(record)
        return parsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(tmp_path: Path, rules_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMOCRM_", "GUNICORN"))}
    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'automation.db'}",
        "RULES_FILE": str(rules_file),
        "WEBHOOK_SECRET": SECRET,
        "DRY_RUN": "1",
    }
    return env | extra


def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code in (200, 503):
                return
        except requests.RequestException:  # not listening yet, or a worker booting
            time.sleep(0.1)
    raise AssertionError("the server did not answer /healthz")


def wait_workers_loaded(process: subprocess.Popen[bytes], database: Path, workers: int) -> None:
    """Until `workers` children of the server hold the database open, which a worker
    does only once it has built the app (the server closes its own connections before
    forking): only then has every worker said all it says at start."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(holds_file(pid, database) for pid in web_workers(process.pid)) >= workers:
            return
        assert process.poll() is None, f"the server exited with {process.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"{workers} workers did not load the app")


def web_workers(pid: int) -> list[int]:
    """The child processes of `pid` but the dispatcher `automation serve` starts."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:  # exited meanwhile
                continue
            if b"dispatch" not in command:
                found.append(int(child))
    return found


def holds_file(pid: int, path: Path) -> bool:
    try:
        return any(os.path.realpath(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process has exited meanwhile
        return False


@contextmanager
def started(
    command: Sequence[str], env: dict[str, str], tmp_path: Path, cwd: Path = ROOT
) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    """Run `command` with its output in files; on leaving, SIGTERM it, wait for it to
    end and fill in the `Output` it yielded."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    output = Output("", "", (out, err))
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        output.stdout, output.stderr = out.read_text(), err.read_text()


def post_webhook(url: str, secret: str = SECRET) -> None:
    answer = requests.post(
        f"{url}/webhooks/amocrm/{secret}/",
        data=WEBHOOK,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def serve_command(port: int, workers: int = 2) -> list[str]:
    return [
        str(BIN / "automation"),
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
    ]


# ------------------------------------------------------------------ LOG_FORMAT=json


def test_serve_with_json_logs_writes_nothing_but_json_lines(
    tmp_path: Path, rules_file: Path
) -> None:
    port = free_port()
    env = environment(tmp_path, rules_file, LOG_FORMAT="json", WEBHOOK_SECRET="short")
    with started(serve_command(port), env, tmp_path) as (process, output):
        wait_healthy(f"http://127.0.0.1:{port}", process)
        wait_workers_loaded(process, tmp_path / "automation.db", workers=2)
        output.wait_for("dispatcher started", process)
        post_webhook(f"http://127.0.0.1:{port}", "short")
        requests.get(f"http://127.0.0.1:{port}/no-such-page", timeout=30)

    records = output.json_lines()
    messages = [record["message"] for record in records]
    [banner] = [r for r in records if r["message"].startswith("serving on ")]
    assert banner["url"] == f"http://127.0.0.1:{port}"
    assert banner["dry_run"] is True
    [summary] = [r for r in records if r["message"].startswith("calls=")]
    assert set(summary) >= {"calls", "sent", "dry_run", "failed", "retried", "uncertain"}
    assert any(m.startswith("Starting gunicorn") for m in messages)  # the master's own
    assert any(m.startswith("Booting worker with pid") for m in messages)  # a worker's
    assert any(m.startswith("webhook delivery=") for m in messages)
    assert any(m.startswith("WEBHOOK_SECRET has 5 characters") for m in messages)
    assert process.returncode == 0


@pytest.mark.parametrize("app", ["wsgi:app", "automation:create_app()"])
def test_plain_gunicorn_with_json_logs_writes_nothing_but_json_lines(
    tmp_path: Path, rules_file: Path, app: str
) -> None:
    """Run from the checkout, where gunicorn reads gunicorn.conf.py by itself."""
    port = free_port()
    command = [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", app]
    env = environment(tmp_path, rules_file, LOG_FORMAT="json")
    with started(command, env, tmp_path) as (process, output):
        wait_healthy(f"http://127.0.0.1:{port}", process)
        wait_workers_loaded(process, tmp_path / "automation.db", workers=2)
        post_webhook(f"http://127.0.0.1:{port}")

    messages = [record["message"] for record in output.json_lines()]
    assert any(m.startswith("Starting gunicorn") for m in messages)
    assert any(m.startswith("Listening at: http://127.0.0.1:") for m in messages)
    assert any(m.startswith("webhook delivery=") for m in messages)
    assert any(m.startswith("Shutting down: Master") for m in messages)


def test_dispatch_with_json_logs_ends_with_its_summary_as_a_json_line(
    tmp_path: Path, rules_file: Path
) -> None:
    env = environment(tmp_path, rules_file, LOG_FORMAT="json")
    done = run_script("dispatch", "--once", env=env, cwd=tmp_path, timeout=120)

    records = Output(done.stdout, done.stderr).json_lines()
    assert done.returncode == 0, done.stderr
    assert records[-1]["message"] == "calls=0 sent=0 dry_run=0 failed=0 retried=0 uncertain=0"
    assert (records[-1]["calls"], records[-1]["level"]) == (0, "info")


def test_a_setting_error_with_json_logs_is_one_json_line(tmp_path: Path, rules_file: Path) -> None:
    env = environment(tmp_path, rules_file, LOG_FORMAT="json", AMOCRM_MAX_RPS="0")
    done = run_script("dispatch", "--once", env=env, cwd=tmp_path, timeout=120)

    [record] = Output(done.stdout, done.stderr).json_lines()
    assert done.returncode == 1
    assert record["level"] == "error"
    assert record["message"].startswith("invalid settings:\n  AMOCRM_MAX_RPS: expected")


# ---------------------------------------------------------- what serve says at start


def test_serve_says_the_masked_webhook_url_and_its_warnings_once_for_all_workers(
    tmp_path: Path, rules_file: Path
) -> None:
    port = free_port()
    env = environment(tmp_path, rules_file, WEBHOOK_SECRET="abcdefgh", AMOCRM_ACCESS_TOKEN="tok")
    with started(serve_command(port, workers=3), env, tmp_path) as (process, output):
        wait_healthy(f"http://127.0.0.1:{port}", process)
        wait_workers_loaded(process, tmp_path / "automation.db", workers=3)

    text = output.stdout + output.stderr
    assert output.stdout.splitlines()[0] == (
        f"serving on http://127.0.0.1:{port}  webhook URL: "
        f"http://127.0.0.1:{port}/webhooks/amocrm/…/ (the full secret: WEBHOOK_SECRET, "
        "from the environment)  dry_run=True"
    )
    assert text.count("WEBHOOK_SECRET has 8 characters") == 1
    assert text.count("AMOCRM_ACCESS_TOKEN is shorter than") == 1
    assert text.count("rules loaded") == 1
    assert "abcdefgh" not in text


def test_serve_shows_the_first_three_characters_of_a_long_secret(
    tmp_path: Path, rules_file: Path
) -> None:
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET={SECRET}\n")
    env = environment(tmp_path, rules_file)
    del env["WEBHOOK_SECRET"]
    port = free_port()
    with started(serve_command(port, workers=1), env, tmp_path, cwd=tmp_path) as (process, out):
        wait_healthy(f"http://127.0.0.1:{port}", process)

    assert f"webhook URL: http://127.0.0.1:{port}/webhooks/amocrm/abc…/ " in out.stdout
    assert f"(the full secret: WEBHOOK_SECRET, from {tmp_path / '.env'})" in out.stdout
    assert SECRET not in out.stdout + out.stderr


def test_serve_without_a_secret_says_there_is_no_webhook_url(
    tmp_path: Path, rules_file: Path
) -> None:
    env = environment(tmp_path, rules_file)
    del env["WEBHOOK_SECRET"]
    port = free_port()
    with started(serve_command(port, workers=1), env, tmp_path) as (process, output):
        wait_healthy(f"http://127.0.0.1:{port}", process)

    assert output.stdout.splitlines()[0] == (
        f"serving on http://127.0.0.1:{port}  webhook URL: none until WEBHOOK_SECRET is set "
        "(every webhook gets 503)  dry_run=True"
    )
    assert (output.stdout + output.stderr).count("WEBHOOK_SECRET is not set") == 1
