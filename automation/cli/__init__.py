"""The `automation` command line (also reachable as `flask --app wsgi …`).

Each command is a thin wrapper over library functions; output goes through
`click.echo` here and nowhere else. `--help` and the rules commands need no database.

One module per command group; this one builds the top-level group `main` from them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from automation.cli import (
    auth,
    config,
    database,
    deliveries,
    launches,
    prune,
    replay,
    rules,
    server,
    subscriptions,
)
from automation.errors import AutomationError


@click.group()
def main() -> None:
    """amoCRM automation server: webhooks in, Salesbot launches out."""


main.add_command(database.db)
main.add_command(server.dispatch_command)
main.add_command(server.serve)
main.add_command(auth.auth)
main.add_command(config.config_group)
main.add_command(rules.rules_group)
main.add_command(launches.launches_group)
main.add_command(deliveries.deliveries_group)
main.add_command(replay.replay_command)
main.add_command(subscriptions.webhooks_group)
main.add_command(prune.prune_command)


def _clean_errors(command: click.Command) -> None:
    """The one place where our errors become CLI errors: every command of the tree, in
    `automation …` and in `flask --app wsgi …` alike, turns an `AutomationError` into
    one clean line (`Error: …`, exit 1), never a traceback.

    A command's callback is wrapped (so a `ServerCommand` still sees a click error it
    can print as JSON); a group's `invoke` too, because it parses its subcommands'
    options, whose callbacks may read the settings. Commands catch our errors only to
    say something else (a file name in front, a usage error, a normal end)."""
    if isinstance(command, click.Group):
        command.invoke = _cleanly(command.invoke)  # type: ignore[method-assign]
        for sub in command.commands.values():
            _clean_errors(sub)
    elif command.callback is not None:
        command.callback = _cleanly(command.callback)


def _cleanly(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AutomationError as exc:  # messages never carry a token or secret
            raise click.ClickException(str(exc)) from exc

    return run


_clean_errors(main)
