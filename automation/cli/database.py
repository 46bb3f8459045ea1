"""`automation db …`: the database schema."""

from __future__ import annotations

import click

from automation.cli.common import command_settings, database_errors, safe_url


@click.group("db")
def db() -> None:
    """Database schema (Alembic migrations in migrations/)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date (DATABASE_URL)."""
    from alembic.util import CommandError

    from automation.store.database import upgrade

    settings = command_settings()
    with database_errors(settings.database_url):
        try:
            upgrade(settings.database_url, revision)
        except CommandError as exc:  # Alembic's words for a revision it cannot reach
            raise click.BadParameter(str(exc), param_hint="'--revision'") from exc
    click.echo(f"database at revision {revision}: {safe_url(settings.database_url)}")
