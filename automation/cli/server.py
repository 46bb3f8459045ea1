"""`automation serve` (gunicorn and one dispatcher) and `automation dispatch`."""

from __future__ import annotations

import re
import signal
import threading
from typing import Any

import click

from automation.cli.common import command_runtime
from automation.errors import AutomationError

#: `HOST:PORT` or `[IPv6]:PORT`, what `serve --bind` takes (and prints as a URL).
_BIND = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(?P<port>[0-9]{1,5})")
MAX_PORT = 65535


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


@click.command("dispatch")
@click.option("--once", is_flag=True, help="Send everything due now, then exit.")
def dispatch_command(once: bool) -> None:
    """Send stored launches to amoCRM until SIGTERM/SIGINT (or, with --once, until none is due)."""
    from automation.dispatch import loop as dispatcher

    state = command_runtime()
    try:
        worker = dispatcher.build(state.settings, state.sessions)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    stopped = threading.Event()

    def stop(*_: object) -> None:
        stopped.set()
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        stats = worker.run(once=once)
    except dispatcher.NotAlone as exc:
        if not stopped.is_set():
            raise click.ClickException(str(exc)) from exc
        # Asked to stop while waiting its turn (README: "says so and waits"): that is a
        # normal end, not an error, and must not be the last word of `serve`.
        click.echo("stopped while waiting for the other dispatcher on this SQLite database")
        return
    click.echo(
        f"calls={stats.calls} sent={stats.sent} dry_run={stats.dry_run} failed={stats.failed} "
        f"retried={stats.retried} uncertain={stats.uncertain}"
    )


@click.command("serve")
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
    "--dispatcher/--no-dispatcher",
    default=True,
    show_default=True,
    help="Also run one dispatcher process.",
)
def serve(bind: str, workers: int, dispatcher: bool) -> None:
    """Start the web server (gunicorn) and one dispatcher: the one-command start."""
    from automation.web.serving import run_server

    state = command_runtime()  # fail here, clearly, before any worker starts
    state.engine.dispose()
    banner = (
        f"serving on http://{bind}  webhook URL: http://{bind}/webhooks/amocrm/<WEBHOOK_SECRET>/"
        f"  dry_run={state.settings.is_dry_run}"
    )
    # Said once gunicorn listens: a busy port must not be preceded by "serving on".
    run_server(bind, workers, with_dispatcher=dispatcher, on_ready=lambda: click.echo(banner))
