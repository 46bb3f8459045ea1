"""A real server process on loopback for tests: plain gunicorn or `automation serve`,
its output kept in a file the test reads afterwards, raw HTTP for bodies no client
library would send (cut short, slow, malformed framing)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy import select

from automation.store.database import make_engine
from automation.store.models import Delivery

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FORM = "application/x-www-form-urlencoded"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A started server: its URL, port, process and the file its output goes to."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, output: Path) -> None:
        self.process, self.port, self.output = process, port, output
        self.url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_healthy(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or a worker booting
                time.sleep(0.1)
        raise AssertionError("server did not become healthy")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def server_env(database_url: str, rules_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_")}
    env |= {"DATABASE_URL": database_url, "RULES_FILE": str(rules_file)}
    env.setdefault("WEBHOOK_SECRET", "s3cret")
    return env | extra


@contextmanager
def running(
    command: Sequence[str], env: dict[str, str], output: Path, *, cwd: Path = ROOT
) -> Iterator[Server]:
    """Start `command` (its `{port}` filled in), wait until healthy, stop it after."""
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in command]
    with output.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=sink)
    server = Server(process, port, output)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def children_of(pid: int) -> list[int]:
    """The child processes of `pid` (gunicorn's workers, serve's dispatcher), from /proc:
    each thread's own, since serve starts its dispatcher from a thread."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot), None if there is none: with
    the pid, it names one process even after its pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def gone(pid: int, started: int | None = None) -> bool:
    """Exited: no such process, a zombie nobody reaped (a container's PID 1 may not),
    or, given when it started, another process that took its pid since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] == "Z" or (started is not None and int(fields[19]) != started)


def wait_gone(pids: Sequence[int], seconds: float) -> bool:
    """Whether all of them exit within `seconds` (each named by its start time, read
    now: a pid reused meanwhile counts as gone)."""
    started = {pid: start_time(pid) for pid in pids}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(gone(pid, started[pid]) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def gunicorn(*options: str) -> list[str]:
    """Plain `gunicorn wsgi:app` on the port the test picks."""
    return [str(BIN / "gunicorn"), "-b", "127.0.0.1:{port}", *options, "wsgi:app"]


def serve(*options: str) -> list[str]:
    """`automation serve` without its dispatcher, on the port the test picks."""
    return [
        str(BIN / "automation"),
        "serve",
        "--bind",
        "127.0.0.1:{port}",
        "--no-dispatcher",
        *options,
    ]


def raw_exchange(
    port: int, request: bytes, *, half_close: bool = True, timeout: float = 10
) -> bytes:
    """Send bytes as they are, optionally half-close, and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    return int(answer.split(b" ", 2)[1])


def stored_bodies(database_url: str) -> list[bytes]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(select(Delivery.body).order_by(Delivery.id)))
    finally:
        engine.dispose()
