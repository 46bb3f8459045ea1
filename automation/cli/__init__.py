"""The `automation` command line (also reachable as `flask --app wsgi …`).

Each command is a thin wrapper over library functions; output goes through
`click.echo` here and nowhere else. `--help` and the rules commands need no database.

One module per command group; this one builds the top-level group `main` from them.
"""

from __future__ import annotations

import click

from automation.cli import (
    auth,
    config,
    database,
    launches,
    prune,
    replay,
    rules,
    server,
    subscriptions,
)


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
main.add_command(replay.replay_command)
main.add_command(subscriptions.webhooks_group)
main.add_command(prune.prune_command)
