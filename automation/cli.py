"""The `automation` command line (also reachable as `flask --app wsgi …`).

Each command is a thin wrapper over library functions; output goes through
`click.echo` here and nowhere else. `--help` and the rules commands need no database.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import click

from automation.config import Settings, load_settings
from automation.errors import AutomationError

if TYPE_CHECKING:
    from automation.runtime import Runtime


@click.group()
def main() -> None:
    """amoCRM automation server: webhooks in, Salesbot launches out."""


# ------------------------------------------------------------------ server commands


def _settings() -> Settings:
    try:
        return load_settings()
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


def _runtime() -> Runtime:
    """The server's runtime (database checked, rules loaded), or a clean CLI error."""
    from automation.logs import configure_logging
    from automation.runtime import Runtime

    settings = _settings()
    configure_logging(settings.log_format)
    try:
        return Runtime.build(settings)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group("db")
def db() -> None:
    """Database schema (Alembic migrations in migrations/)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date (DATABASE_URL)."""
    from automation.database import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}: {_safe_url(settings.database_url)}")


@main.command("dispatch")
@click.option("--once", is_flag=True, help="Send everything due now, then exit.")
def dispatch_command(once: bool) -> None:
    """Send stored launches to amoCRM until SIGTERM/SIGINT (or, with --once, until none is due)."""
    from automation import dispatcher

    state = _runtime()
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


@main.command("serve")
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

    state = _runtime()  # fail here, clearly, before any worker starts
    state.engine.dispose()
    click.echo(
        f"serving on http://{bind}  webhook URL: http://{bind}/webhooks/amocrm/<WEBHOOK_SECRET>/"
        f"  dry_run={state.settings.is_dry_run}"
    )
    run_server(bind, workers, with_dispatcher=dispatcher)


@main.group("auth")
def auth() -> None:
    """amoCRM OAuth 2.0 tokens."""


@auth.command("exchange")
@click.argument("code")
def auth_exchange(code: str) -> None:
    """Turn an authorization CODE into tokens stored in the database."""
    from automation.tokens import exchange_code

    state = _runtime()
    try:
        tokens = exchange_code(state.settings, state.sessions, code)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"tokens stored; the access token expires at {tokens.expires_at:%Y-%m-%d %H:%M}Z")


@main.group("config")
def config_group() -> None:
    """The settings in effect."""


@config_group.command("show")
def config_show() -> None:
    """Print the settings read from the environment and .env, secrets masked."""
    for name, value in _settings().masked().items():
        click.echo(f"{name}={'' if value is None else value}")


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)
