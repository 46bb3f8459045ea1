"""What several command groups share: settings, the runtime, the database, rules files
and time options, each turned into a clean CLI error when it fails.

Heavy modules (SQLAlchemy, the app) are imported inside the functions, so that
`--help` imports none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from automation.config import Settings, load_settings

if TYPE_CHECKING:
    from datetime import datetime, tzinfo
    from pathlib import Path

    from sqlalchemy.orm import Session, sessionmaker

    from automation.rules.load import RuleSet
    from automation.web.runtime import Runtime

#: What a click decorator decorates: a command's function, or the command.
FC = TypeVar("FC", bound="Callable[..., Any] | click.Command")


def command_settings() -> Settings:
    """The settings from the environment, or a clean CLI error naming what is wrong."""
    return load_settings()


def command_runtime() -> Runtime:
    """The server's runtime (database checked, rules loaded), or a clean CLI error.

    A database that does not answer is an operator's error like a bad setting: one
    line naming the database (password hidden), not SQLAlchemy's traceback.
    """
    from automation.logs import configure_for
    from automation.web.runtime import Runtime

    settings = command_settings()
    configure_for(settings)
    with database_errors(settings.database_url):
        state = Runtime.build(settings)
    # Close the pool when the command ends, not whenever the garbage collector runs.
    click.get_current_context().call_on_close(state.engine.dispose)
    return state


def announce(settings: Settings, message: str, **fields: Any) -> None:
    """Tell the operator of a server process something (the start banner, the
    dispatcher's summary): a plain line on stdout, or with LOG_FORMAT=json a JSON line
    like all its others, with `fields` as keys of their own."""
    if settings.log_format == "json":
        logging.getLogger("automation.cli").info(message, extra=fields)
    else:
        click.echo(message)


class ServerCommand(click.Command):
    """A long-running command (`serve`, `dispatch`). With LOG_FORMAT=json a log shipper
    reads its output, so its own errors and an interrupt during start-up are JSON lines
    too, not click's `Error: …` and `Aborted!`; exit statuses stay click's."""

    def invoke(self, ctx: click.Context) -> Any:
        from automation.logs import configure_logging, wanted_log_format

        try:
            return super().invoke(ctx)
        except (click.ClickException, KeyboardInterrupt) as exc:
            if wanted_log_format() != "json":
                raise
            configure_logging("json")  # when the settings themselves were wrong
            if isinstance(exc, KeyboardInterrupt):
                logging.getLogger("automation.cli").error("interrupted")
                ctx.exit(130)
            logging.getLogger("automation.cli").error("%s", exc.format_message())
            ctx.exit(exc.exit_code)


def safe_url(url: str) -> str:
    """A database URL fit to print: the password hidden."""
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn what connecting, migrating or querying `url` raises into one CLI error line:
    `database postgresql://u:***@host/db: connection refused`. Settings and rules
    errors keep their own words."""
    from sqlalchemy.exc import SQLAlchemyError

    from automation.errors import SchemaOutdated

    try:
        yield
    except (SQLAlchemyError, SchemaOutdated) as exc:
        raise click.ClickException(f"database {safe_url(url)}: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line: SQLAlchemy's wrapper adds the exception
    class, a hint and a link on further lines."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def command_sessions(*, read_only: bool = False, create: bool = False) -> sessionmaker[Session]:
    """Sessions on an existing database at DATABASE_URL, its schema checked.

    No command but `serve`, `dispatch`, `db upgrade` and `create` ones (set-up such as
    `auth exchange`, which may come before the first `serve`) creates a database: run
    from the wrong directory, one would leave an empty `automation.db` there and answer
    "no launches match". A `read_only` command does not migrate either: on an old
    schema it says to run `automation db upgrade`. The engine is closed when the
    command ends (click closes its context), so no connection outlives the command.
    """
    from automation.store.database import (
        check_schema,
        ensure_schema,
        make_engine,
        make_session_factory,
        require_existing,
    )

    settings = command_settings()
    with database_errors(settings.database_url):
        if not create:
            require_existing(settings.database_url)
        engine = make_engine(
            settings.database_url, idle_in_transaction=settings.longest_transaction
        )
        click.get_current_context().call_on_close(engine.dispose)
        (check_schema if read_only else ensure_schema)(engine)
    return make_session_factory(engine)


def rules_path(given: Path | None = None) -> Path:
    """`given`, else RULES_FILE from the environment or `.env` (as the server reads it)."""
    import os
    from pathlib import Path

    from dotenv import dotenv_values

    found = os.environ.get("RULES_FILE") or dotenv_values(".env").get("RULES_FILE")
    return given or Path(found or "rules.yaml")


def command_rules(path: Path) -> RuleSet:
    """The rules file loaded, or a clean CLI error with its file and line."""
    from automation.rules.load import load_rules_file

    return load_rules_file(path)


def parse_time_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    """Option callback: `2h`, `3d` (that long ago) or an ISO 8601 date or time."""
    from datetime import UTC, datetime

    from automation.times import parse_moment

    if value is None:
        return None
    try:
        return parse_moment(value, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def time_option(name: str, meaning: str, **options: Any) -> Callable[[FC], FC]:
    """`--since TIME` or `--until TIME`, read by `parse_time_option`: every command
    that selects by time takes the same forms, and its help says so after `meaning`
    ("Received before")."""
    return click.option(
        name,
        metavar="TIME",
        callback=parse_time_option,
        help=f"{meaning}: 2h, 3d or an ISO 8601 time.",
        **options,
    )


def statuses_option(choices: Sequence[str], nouns: str) -> Callable[[FC], FC]:
    """`--status S`, repeatable, into the command's `statuses` tuple: the listings
    filter by any of several statuses alike."""
    return click.option(
        "--status",
        "statuses",
        multiple=True,
        type=click.Choice(choices),
        help=f"Only {nouns} in this status (repeat for several).",
    )


def parse_zone_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tzinfo:
    """Option callback: an IANA zone, else DISPLAY_TIMEZONE (default UTC)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from automation.times import display_zone

    name = value if value is not None else command_settings().display_timezone
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise click.BadParameter(
            f"expected an IANA time zone such as UTC or Europe/Moscow, got {name!r}", ctx, param
        ) from exc
    return display_zone(name)


#: `--tz ZONE` for commands that show times.
TZ_OPTION = click.option(
    "--tz",
    "zone",
    metavar="ZONE",
    callback=parse_zone_option,
    help="Show times in this IANA zone (default: DISPLAY_TIMEZONE, else UTC).",
)
