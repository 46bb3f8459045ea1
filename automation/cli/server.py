"""`automation serve` (gunicorn and one dispatcher) and `automation dispatch`."""

from __future__ import annotations

import signal

import click

from automation.cli.common import command_runtime
from automation.errors import AutomationError


@click.command("dispatch")
@click.option("--once", is_flag=True, help="Send everything due now, then exit.")
def dispatch_command(once: bool) -> None:
    """Send stored launches to amoCRM until SIGTERM/SIGINT (or, with --once, until none is due)."""
    from automation import dispatcher

    state = command_runtime()
    try:
        worker = dispatcher.build(state.settings, state.sessions)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    try:
        stats = worker.run(once=once)
    except dispatcher.NotAlone as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"calls={stats.calls} sent={stats.sent} dry_run={stats.dry_run} failed={stats.failed} "
        f"retried={stats.retried} uncertain={stats.uncertain}"
    )


@click.command("serve")
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="Address to listen on.")
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes.")
@click.option(
    "--dispatcher/--no-dispatcher",
    default=True,
    show_default=True,
    help="Also run one dispatcher process.",
)
def serve(bind: str, workers: int, dispatcher: bool) -> None:
    """Start the web server (gunicorn) and one dispatcher: the one-command start."""
    from automation.serving import run_server

    state = command_runtime()  # fail here, clearly, before any worker starts
    state.engine.dispose()
    click.echo(
        f"serving on http://{bind}  webhook URL: http://{bind}/webhooks/amocrm/<WEBHOOK_SECRET>/"
        f"  dry_run={state.settings.is_dry_run}"
    )
    run_server(bind, workers, with_dispatcher=dispatcher)
