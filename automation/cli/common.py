"""What several command groups share: settings, the runtime, the database, rules files
and time options, each turned into a clean CLI error when it fails.

Heavy modules (SQLAlchemy, the app) are imported inside the functions, so that
`--help` imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from automation.config import Settings, load_settings
from automation.errors import AutomationError

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from sqlalchemy.orm import Session, sessionmaker

    from automation.rules import RuleSet
    from automation.runtime import Runtime


def command_settings() -> Settings:
    """The settings from the environment, or a clean CLI error naming what is wrong."""
    try:
        return load_settings()
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


def command_runtime() -> Runtime:
    """The server's runtime (database checked, rules loaded), or a clean CLI error."""
    from automation.logs import configure_logging
    from automation.runtime import Runtime

    settings = command_settings()
    configure_logging(settings.log_format)
    try:
        state = Runtime.build(settings)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    # Close the pool when the command ends, not whenever the garbage collector runs.
    click.get_current_context().call_on_close(state.engine.dispose)
    return state


def safe_url(url: str) -> str:
    """A database URL fit to print: the password hidden."""
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def command_sessions() -> sessionmaker[Session]:
    """Sessions on DATABASE_URL, its schema checked as the server checks it.

    The engine is closed when the command ends (click closes its context), so no
    connection outlives the command, in a process or under CliRunner.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from automation.database import ensure_schema, make_engine, make_session_factory

    settings = command_settings()
    engine = make_engine(settings.database_url)
    click.get_current_context().call_on_close(engine.dispose)
    try:
        ensure_schema(engine)
    except (AutomationError, SQLAlchemyError) as exc:
        url = safe_url(settings.database_url)
        raise click.ClickException(f"database {url}: {exc}") from exc
    return make_session_factory(engine)


def command_rules(path: Path) -> RuleSet:
    """The rules file loaded, or a clean CLI error with its file and line."""
    from automation.rules import load_rules_file

    try:
        return load_rules_file(path)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


def parse_time_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    """Option callback: `2h`, `3d` (that long ago) or an ISO 8601 date or time."""
    from datetime import UTC, datetime

    from automation.launchlog import parse_moment

    if value is None:
        return None
    try:
        return parse_moment(value, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
