"""`automation config …`: the settings in effect."""

from __future__ import annotations

import click

from automation.cli.common import command_settings


@click.group("config")
def config_group() -> None:
    """The settings in effect."""


@config_group.command("show")
def config_show() -> None:
    """Print the settings read from the environment and .env, secrets masked."""
    for name, value in command_settings().masked().items():
        click.echo(f"{name}={'' if value is None else value}")
