"""`automation config …`: the settings in effect."""

from __future__ import annotations

import click

from automation.cli.common import command_settings


@click.group("config")
def config_group() -> None:
    """The settings in effect."""


@config_group.command("show")
def config_show() -> None:
    """Print the settings read from the environment and .env, secrets masked, and the
    database file a relative DATABASE_URL resolves to from here."""
    from automation.store.database import sqlite_path

    settings = command_settings()
    for name, value in settings.masked().items():
        click.echo(f"{name}={'' if value is None else value}")
    path = sqlite_path(settings.database_url)
    if path is not None:
        state = "exists" if path.is_file() else "not there"
        click.echo(f"# database file: {path} ({state})")
