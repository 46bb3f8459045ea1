"""The `automation` command line (also reachable as `flask --app wsgi …`).

Each command is a thin wrapper over library functions; output goes through
`click.echo` here and nowhere else. `--help` and the rules commands need no database.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from automation.config import Settings, load_settings
from automation.errors import AutomationError

if TYPE_CHECKING:
    from datetime import datetime

    from automation.rules import RuleSet
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
        state = Runtime.build(settings)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    # Close the pool when the command ends, not whenever the garbage collector runs.
    click.get_current_context().call_on_close(state.engine.dispose)
    return state


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


# --------------------------------------------------------------------------- rules
# `automation rules …` reads files only: no settings, database or app needed.


@main.group("rules")
def rules_group() -> None:
    """Check rules files and try them on saved webhooks (no database needed)."""


def _rules_path(given: Path | None = None) -> Path:
    """`given`, else RULES_FILE from the environment or `.env` (as the server reads it)."""
    from dotenv import dotenv_values

    found = os.environ.get("RULES_FILE") or dotenv_values(".env").get("RULES_FILE")
    return given or Path(found or "rules.yaml")


def _load_rules(path: Path) -> RuleSet:
    from automation.rules import load_rules_file

    try:
        return load_rules_file(path)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


@rules_group.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def rules_check(files: tuple[Path, ...]) -> None:
    """Validate rules FILES (default: $RULES_FILE or rules.yaml).

    Prints the rules per event type and conflict warnings (which do not fail the
    check); exits 1 listing every error with file:line:column.
    """
    from automation.rules import load_rules_file

    failed = False
    for path in files or (_rules_path(),):
        try:
            ruleset = load_rules_file(path)
        except AutomationError as exc:
            click.echo(str(exc), err=True)
            failed = True
            continue
        _echo_summary(ruleset)
    if failed:
        raise click.exceptions.Exit(1)


def _echo_summary(ruleset: RuleSet) -> None:
    disabled = sum(not rule.enabled for rule in ruleset.rules)
    click.echo(f"{ruleset.filename}: ok, {len(ruleset)} rules ({disabled} disabled)")
    summary = ruleset.summary()
    width = max((len(event_type) for event_type in summary), default=0)
    for event_type, count in summary.items():
        click.echo(f"  {event_type:<{width}}  {count}")
    for warning in ruleset.conflicts():
        click.echo(f"warning: {warning}")


@rules_group.command("test")
@click.argument("payloads", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Rules file (default: the cases file's `rules:`, $RULES_FILE or rules.yaml).",
)
@click.option("--at", metavar="TIME", help="Evaluate as of this moment (ISO 8601; naive is UTC).")
@click.option(
    "--cases",
    "cases_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of cases with expected launches; exit 1 if any fails.",
)
def rules_test(
    payloads: tuple[Path, ...], rules_file: Path | None, at: str | None, cases_file: Path | None
) -> None:
    """Show which rules match saved webhook PAYLOADS and which launches result.

    Writes nothing. A payload is amoCRM's raw form body, or JSON when it starts
    with `{`. Rules on other event types are not shown.
    """
    if bool(payloads) == bool(cases_file):
        raise click.UsageError("give payload files or --cases FILE, one of the two")
    now = _moment(at)
    if cases_file is not None:
        _run_cases(cases_file, rules_file, now)
        return
    ruleset = _load_rules(_rules_path(rules_file))
    for path in payloads:
        _show_payload(ruleset, path, now)


def _moment(at: str | None) -> datetime:
    from datetime import UTC, datetime

    from automation.rules import parse_instant

    if at is None:
        return datetime.now(UTC)
    try:
        return parse_instant(at)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--at'") from exc


def _show_payload(ruleset: RuleSet, path: Path, now: datetime) -> None:
    import json

    from automation.rules import decode_payload, describe_event, describe_launch

    try:
        payload = decode_payload(path.read_bytes().strip())
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror}") from exc
    except AutomationError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    click.echo(f"{path}: {len(payload.events)} event(s), at {now.isoformat()}")
    for event in payload.events:
        click.echo(f"event {describe_event(event)}")
        click.echo(f"  data: {json.dumps(event.data, ensure_ascii=False, default=str)}")
        decisions = ruleset.explain(event, now)
        if not decisions:
            click.echo(f"  no rules listen to {event.type}")
        for decision in decisions:
            click.echo(f"  rule {decision.rule}: {decision.reason}")
        for decision in decisions:
            if decision.launch is not None:
                click.echo(f"  launch {describe_launch(decision.launch)}")


def _run_cases(cases_file: Path, rules_file: Path | None, now: datetime) -> None:
    from automation.rules import load_cases_file, run_case

    try:
        cases = load_cases_file(cases_file)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    ruleset = _load_rules(rules_file or cases.rules or _rules_path())
    failed = 0
    for case in cases.cases:
        result = run_case(ruleset, case, now)
        click.echo(f"{'PASS' if result.passed else 'FAIL'}  {result.name}")
        if not result.passed:
            failed += 1
            lines = [result.error] if result.error else ["--- expected", "+++ actual", *result.diff]
            for line in lines:
                click.echo(f"    {line}")
    total = len(cases.cases)
    click.echo(f"{total} cases: {total - failed} passed, {failed} failed")
    if failed:
        raise click.exceptions.Exit(1)
