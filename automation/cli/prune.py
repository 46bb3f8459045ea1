"""`automation prune`: delete old rows (DATABASE_URL).

It reads the rules: a cooldown counts sent launches, which must be kept that long.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from automation.cli.common import command_rules, command_sessions, command_settings
from automation.config import Settings
from automation.errors import AutomationError

if TYPE_CHECKING:
    from datetime import timedelta


@click.command("prune")
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    help="Delete what is older than this: 30d (days) or 12h (hours). [default: RETENTION_DAYS]",
)
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Rows deleted per transaction.",
)
def prune_command(older_than: str | None, batch_size: int) -> None:
    """Delete old settled launches, their call links, API calls nothing refers to, and
    old deliveries no launch came from, a small transaction at a time.

    pending, sending and uncertain launches are kept, with their deliveries and the
    other launches of those deliveries. sent and dry_run launches are kept at least as
    long as the longest cooldown of the rules, which counts them.
    """
    from datetime import UTC, datetime

    from automation.store import retention

    settings = command_settings()
    age = _retention_age(older_than, settings)
    rules = command_rules(Path(settings.rules_file))
    cooldown = retention.longest_cooldown(rules)
    cutoffs = retention.Cutoffs.at(datetime.now(UTC), age, cooldown, rules.content_hash)
    click.echo(f"pruning {retention.describe_cutoffs(cutoffs)}")
    pruned = retention.prune(command_sessions(), cutoffs, batch_size)
    click.echo(f"pruned {pruned}")


def _retention_age(older_than: str | None, settings: Settings) -> timedelta:
    from datetime import timedelta

    from automation.times import parse_age

    if older_than is None:
        if settings.retention_days is None:
            raise click.UsageError("give --older-than (e.g. 30d) or set RETENTION_DAYS")
        return timedelta(days=settings.retention_days)
    try:
        return parse_age(older_than)
    except AutomationError as exc:
        raise click.BadParameter(str(exc), param_hint="'--older-than'") from exc
