"""`automation db …`: the database schema."""

from __future__ import annotations

import click

from automation.cli.common import command_settings, safe_url


@click.group("db")
def db() -> None:
    """Database schema (Alembic migrations in migrations/)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date (DATABASE_URL)."""
    from automation.database import upgrade

    settings = command_settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}: {safe_url(settings.database_url)}")
