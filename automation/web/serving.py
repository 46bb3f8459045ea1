"""`automation serve`: gunicorn for the web part, plus one dispatcher process.

The dispatcher runs as a child process (`python -m automation dispatch`) so that a
crash of either side is visible and gunicorn's workers stay plain web workers.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    wait_exponential,
)

from automation.logs import GunicornLogger

log = logging.getLogger("automation.serving")


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn with our app factory, configured from arguments, not a config file."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from automation import create_app

        # The server said the warnings and `rules loaded` once already: a worker that
        # said them again would say them once per worker, and again at each restart.
        return create_app(announce=False)


def run_server(
    bind: str,
    workers: int,
    threads: int = 1,
    *,
    with_dispatcher: bool,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Run until gunicorn exits (SIGTERM/SIGINT); stop the dispatcher with it.

    The dispatcher starts, and `on_ready` runs, only once gunicorn listens: when the
    address is taken, gunicorn's "Can't connect to …" is the last word, not a second
    dispatcher's complaint about the first one.
    """
    server_pid, metrics_dir = os.getpid(), share_metrics_dir()
    keeper = DispatcherKeeper(server_pid)

    def when_ready(_arbiter: Any) -> None:
        if with_dispatcher:
            keeper.stop_with_server()
            keeper.start()
        on_ready()

    hooks = {"when_ready": when_ready, "child_exit": mark_worker_dead}
    try:
        options = {
            "bind": bind,
            "workers": workers,
            # Threads: a slow body holds one thread, not the worker; the webhooks of a
            # worker's threads share its committer's transactions (store.groupcommit).
            "worker_class": "automation.web.serving.JsonErrorsWorker",
            "threads": threads,
            "timeout": 30,
            "graceful_timeout": 10,
        }
        if "control_socket_disable" in gunicorn_settings():
            # gunicorn >= 24 listens on a control socket at one path for every gunicorn
            # of the user (~/.gunicorn/gunicorn.ctl), which accepts reload, worker add
            # and shutdown: the last server started takes it over from the others.
            options["control_socket_disable"] = True
        _Gunicorn(options | hooks | {"logger_class": GunicornLogger}).run()
    finally:
        # A worker leaves gunicorn's loop by SystemExit through here too: only the
        # server's own process may stop the dispatcher or remove what the others
        # still write to.
        if os.getpid() == server_pid:
            keeper.stop()
            shutil.rmtree(metrics_dir, ignore_errors=True)


#: A dispatcher that ran this long before it exited was healthy: the next one starts at
#: once and its back-off starts again from a second.
HEALTHY_RUN_SECONDS = 60.0
#: The longest wait before starting the dispatcher again after quick exits in a row.
LONGEST_RESTART_WAIT = 60.0


class DispatcherKeeper:
    """Runs `serve`'s dispatcher and starts it again when it exits, as gunicorn does
    for its workers: a dispatcher that died (a bug, the OOM killer, a stray `kill`)
    otherwise left launches piling up behind a web server that still answered 200.
    Quick exits in a row wait 1 s, 2 s, 4 s … up to a minute (tenacity's schedule), so a
    dispatcher that cannot start (a database it cannot open) is not started in a loop.

    A thread of the server's process waits on the child; `stop` (the server stopping)
    ends it, and no dispatcher starts after that. The child is started by posix_spawn,
    not subprocess's fork and exec: that one reads a pipe until the child has exec'd,
    and a gunicorn worker forked from this process meanwhile inherits the pipe and
    holds it open for its whole life, so the keeper hung there and never saw its
    dispatcher die (a test found it, one run in a few).
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.thread = threading.Thread(target=self._keep, name="dispatcher-keeper", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop_with_server(self) -> None:
        """From now on, a SIGTERM, SIGINT or SIGQUIT for the server means its dispatcher
        will stop too. Ctrl-C in a terminal and systemd's stop signal the whole group, so
        the dispatcher usually stops before `stop` is called: without this it looked
        like a crash (an ERROR and a restart scheduled). Wraps gunicorn's handlers,
        which must be installed already (they are by `when_ready`)."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            previous = signal.getsignal(signum)
            if callable(previous):
                signal.signal(signum, self._stopping_handler(previous))

    def _stopping_handler(self, previous: Callable[[int, Any], Any]) -> Callable[[int, Any], None]:
        def handler(signum: int, frame: Any) -> None:
            self.stopping.set()
            previous(signum, frame)

        return handler

    def stop(self, grace: float = 15) -> None:
        """Start no other; SIGTERM the current one (it finishes its call in flight),
        SIGKILL after `grace` seconds. The keeper thread reaps it."""
        with self.lock:
            self.stopping.set()
            pid = self.pid
        if self.thread.ident is None:
            return
        if pid is not None:
            _signal(pid, signal.SIGTERM)
        self.thread.join(grace)
        with self.lock:
            pid = self.pid
        if pid is not None:
            _signal(pid, signal.SIGKILL)
            self.thread.join(5)

    def _keep(self) -> None:
        quick = retry_if_result(
            lambda ran: ran < HEALTHY_RUN_SECONDS and not self.stopping.is_set()
        )
        while not self.stopping.is_set():
            Retrying(
                retry=quick | retry_if_exception_type(OSError),
                wait=wait_exponential(multiplier=1, min=1, max=LONGEST_RESTART_WAIT),
                sleep=self._pause,
                before_sleep=_say_restart,
            )(self._run_once)

    def _pause(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def _run_once(self) -> float:
        """One dispatcher, from start to exit: how long it ran, in seconds."""
        from automation.cli.server import SERVER_PID_VARIABLE

        with self.lock:
            if self.stopping.is_set():
                return HEALTHY_RUN_SECONDS
            # It stops with this process even when this one is SIGKILLed.
            env = os.environ | {SERVER_PID_VARIABLE: str(self.server_pid)}
            command = [sys.executable, "-m", "automation", "dispatch"]
            # Signals Python ignores go back to their defaults, as subprocess does.
            restore = (signal.SIGPIPE, signal.SIGXFSZ)
            self.pid = pid = os.posix_spawn(sys.executable, command, env, setsigdef=restore)
        started = time.monotonic()
        code = _wait(pid)
        ran = time.monotonic() - started
        with self.lock:
            self.pid = None
        if not self.stopping.is_set():
            how = "for a reason unknown" if code is None else f"with code {code}"
            log.error("the dispatcher (pid %s) exited %s after %.1f s", pid, how, ran)
        return ran


def _wait(pid: int) -> int | None:
    """The child's exit code (negative: the signal that ended it), or None when
    gunicorn's reaper (which waits for any child) took its status first."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _say_restart(attempt: RetryCallState) -> None:
    wait = attempt.upcoming_sleep
    log.error(
        "starting the dispatcher again in %.0f s (quick exit #%d)", wait, attempt.attempt_number
    )


def gunicorn_settings() -> dict[str, Any]:
    """The settings this gunicorn knows (they vary across versions)."""
    from gunicorn.config import Config

    return dict(Config().settings)


def share_metrics_dir() -> str:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this server's workers and dispatcher.

    Set before any of them starts (and before this process imports prometheus-client,
    which picks its mode at import), so that each writes its counters where a scrape
    reads them all. Fresh, because files left by an earlier run would add its counts
    to this one's. Under $TMPDIR; removed when the server stops.
    """
    if "prometheus_client" in sys.modules:
        log.error("prometheus_client was imported too early: /metrics will count per worker")
    path = tempfile.mkdtemp(prefix="automation-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def mark_worker_dead(server: Any, worker: Any) -> None:
    """gunicorn's `child_exit` hook: drop a dead worker's live gauges from scrapes
    (its counters stay: they are part of the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class JsonErrorsWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, whose own answers to malformed HTTP (a NUL in a
    header, a bad Content-Length, a garbled request line, a URI over 4094 bytes) are
    JSON `{"error": …}` like the app's, instead of an HTML page.

    gunicorn writes those pages itself, before any app runs, and has no setting for
    their format; its `handle_error` is given a socket that rewrites the page it
    writes (status, reason and message kept).
    """

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        super().handle_error(req, _JsonErrorSocket(client), addr, exc)


class _JsonErrorSocket:
    """The client socket, except that what is sent through it is `json_error_page`d."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(json_error_page(data))


_ERROR_MESSAGE = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.DOTALL)


def json_error_page(data: bytes) -> bytes:
    """gunicorn's HTML error answer as the same status with a JSON body."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 3 or not parts[0].startswith(b"HTTP/"):
        return data  # not the page we know: leave it as it is
    found = _ERROR_MESSAGE.search(body)
    message = html.unescape(found[1].decode("latin-1")) if found else ""
    payload = json.dumps({"error": message or parts[2].decode("latin-1")}).encode()
    headers = b"Connection: close\r\nContent-Type: application/json\r\nContent-Length: %d"
    return status_line + b"\r\n" + headers % len(payload) + b"\r\n\r\n" + payload
