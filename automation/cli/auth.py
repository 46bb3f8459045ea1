"""`automation auth …`: amoCRM OAuth 2.0 tokens."""

from __future__ import annotations

import click

from automation.cli.common import command_sessions, command_settings


@click.group("auth")
def auth() -> None:
    """amoCRM OAuth 2.0 tokens."""


@auth.command("exchange")
@click.argument("code")
def auth_exchange(code: str) -> None:
    """Turn an authorization CODE into tokens stored in the database."""
    from automation.dispatch.tokens import exchange_code

    # No rules here: an exchange needs the database and amoCRM only.
    settings = command_settings()
    tokens = exchange_code(settings, command_sessions(create=True), code)
    click.echo(f"tokens stored; the access token expires at {tokens.expires_at:%Y-%m-%d %H:%M}Z")
