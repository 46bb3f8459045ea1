"""The `automation` command line (also reachable as `flask --app wsgi …`).

Each command is a thin wrapper over library functions; output goes through
`click.echo` here and nowhere else.
"""

from __future__ import annotations

import click
from flask.cli import FlaskGroup

from automation import create_app


def _make_app() -> object:
    return create_app()


@click.group(cls=FlaskGroup, create_app=_make_app, add_default_commands=False)
def main() -> None:
    """amoCRM automation server: webhooks in, Salesbot launches out."""
