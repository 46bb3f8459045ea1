"""`automation serve` (gunicorn and one dispatcher) and `automation dispatch`."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from automation.cli.common import (
    ServerCommand,
    announce,
    command_runtime,
    command_sessions,
    command_settings,
)
from automation.errors import NotAlone

if TYPE_CHECKING:
    from automation.config import Settings

#: `HOST:PORT` or `[IPv6]:PORT`, what `serve --bind` takes (and prints as a URL).
_BIND = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(?P<port>[0-9]{1,5})")
MAX_PORT = 65535
#: Characters of WEBHOOK_SECRET the start banner shows, when the secret is long enough
#: (SECRET_MIN_LENGTH) that they give little away: enough to tell two secrets apart.
SHOWN_SECRET_CHARS = 3
#: Set by `serve` for the dispatcher it starts: the server's pid, to stop with it.
SERVER_PID_VARIABLE = "AUTOMATION_SERVE_PID"
#: How often that dispatcher looks whether its server is still there, in seconds.
SERVER_WATCH_SECONDS = 1.0


class BindAddress(click.ParamType[str]):
    """`127.0.0.1:8000`: checked here, where click can name the option, rather than by
    gunicorn, whose complaint about a bad port comes after the start banner."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        match = _BIND.fullmatch(text)
        if match is None or not 1 <= int(match["port"]) <= MAX_PORT:
            self.fail(f"expected HOST:PORT with a port from 1 to {MAX_PORT}, got {text!r}")
        return text


@click.command("dispatch", cls=ServerCommand)
@click.option("--once", is_flag=True, help="Send everything due now, then exit.")
def dispatch_command(once: bool) -> None:
    """Send stored launches to amoCRM until SIGTERM/SIGINT (or, with --once, until none is due)."""
    from automation.dispatch import loop as dispatcher
    from automation.logs import configure_logging

    # The database only: the launches were planned when their webhooks arrived, so
    # the rules (and a broken rules file) are none of the dispatcher's business.
    settings = command_settings()
    configure_logging(settings.log_format)
    worker = dispatcher.build(settings, command_sessions(create=True))
    stopped = threading.Event()

    def stop(*_: object) -> None:
        stopped.set()
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    stop_with_server(stop)
    try:
        stats = worker.run(once=once)
    except NotAlone as exc:
        if not stopped.is_set():
            raise click.ClickException(str(exc)) from exc
        # Asked to stop while waiting its turn (README: "says so and waits"): that is a
        # normal end, not an error, and must not be the last word of `serve`.
        announce(settings, "stopped while waiting for the other dispatcher on this SQLite database")
        return
    counts = {
        "calls": stats.calls,
        "sent": stats.sent,
        "dry_run": stats.dry_run,
        "failed": stats.failed,
        "retried": stats.retried,
        "uncertain": stats.uncertain,
    }
    announce(settings, " ".join(f"{key}={value}" for key, value in counts.items()), **counts)


def stop_with_server(stop: Callable[[], None]) -> None:
    """Under `serve`, stop (as on SIGTERM) once the server that started us is gone.

    `serve` stops its dispatcher itself, except when it is SIGKILLed (the OOM killer,
    `kill -9`): then the dispatcher would carry on alone, and a server started again
    would wait for it forever on SQLite. Its parent changes when the server dies.
    """
    expected = os.environ.get(SERVER_PID_VARIABLE, "")
    if not expected.isdigit():
        return
    server = int(expected)

    def watch() -> None:
        while os.getppid() == server:
            threading.Event().wait(SERVER_WATCH_SECONDS)
        logging.getLogger("automation.dispatcher").error(
            "the server that started this dispatcher (pid %s) is gone: stopping", server
        )
        stop()

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


@click.command("serve", cls=ServerCommand)
@click.option(
    "--bind",
    default="127.0.0.1:8000",
    show_default=True,
    type=BindAddress(),
    help="Address to listen on.",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="gunicorn worker processes.",
)
@click.option(
    "--threads",
    default=8,
    show_default=True,
    envvar="WEB_THREADS",
    show_envvar=True,
    type=click.IntRange(min=1, max=256),
    help="Request threads per worker (gunicorn's gthread workers): a slow upload holds "
    "a thread, not a worker, and the threads' webhooks share one commit.",
)
@click.option(
    "--dispatcher/--no-dispatcher",
    default=True,
    show_default=True,
    help="Also run one dispatcher process.",
)
def serve(bind: str, workers: int, threads: int, dispatcher: bool) -> None:
    """Start the web server (gunicorn) and one dispatcher: the one-command start.

    Each worker process runs request threads (gunicorn's gthread worker) and one
    committer thread that stores every webhook waiting in one transaction: durable
    (synchronous=FULL) and fast, and a slow upload holds a thread, not a worker.
    """
    from automation import warn_at_start
    from automation.web.serving import run_server

    # Fail here, clearly, before any worker starts; say `rules loaded` and the
    # warnings here, once, rather than once per worker (they build the app quietly).
    state = command_runtime()
    warn_at_start(state.settings)
    state.engine.dispose()
    settings, url = state.settings, f"http://{bind}"
    hook = webhook_url(url, settings)
    fields = {"url": url, "webhook_url": hook, "dry_run": settings.is_dry_run}
    banner = f"serving on {url}  webhook URL: {hook}  dry_run={settings.is_dry_run}"

    def on_ready() -> None:
        announce(settings, banner, **fields)

    # Said once gunicorn listens: a busy port must not be preceded by "serving on".
    run_server(bind, workers, threads, with_dispatcher=dispatcher, on_ready=on_ready)


def webhook_url(base: str, settings: Settings) -> str:
    """The webhook URL to register, with WEBHOOK_SECRET cut to its first characters
    (`…/webhooks/amocrm/abc…/`) and where the full one is; a secret too short to be
    safe (the start warning says so) shows none of its characters."""
    from automation.config import SECRET_MIN_LENGTH

    secret = settings.webhook_secret
    if secret is None:
        return "none until WEBHOOK_SECRET is set (every webhook gets 503)"
    value = secret.get_secret_value()
    shown = value[:SHOWN_SECRET_CHARS] if len(value) >= SECRET_MIN_LENGTH else ""
    return f"{base}/webhooks/amocrm/{shown}…/ (the full secret: WEBHOOK_SECRET, {_secret_source()})"


def _secret_source() -> str:
    """Where the settings took WEBHOOK_SECRET from: the environment wins over `.env`."""
    if any(name.lower() == "webhook_secret" for name in os.environ):
        return "from the environment"
    return f"from {Path('.env').resolve()}"
