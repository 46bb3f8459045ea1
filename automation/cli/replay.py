"""`automation replay`: stored deliveries through the current rules (DATABASE_URL)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from automation.cli.common import (
    command_rules,
    command_sessions,
    command_settings,
    time_option,
)

if TYPE_CHECKING:
    from datetime import datetime


@click.command("replay")
@time_option("--since", "Received at or after", required=True)
@time_option("--until", "Received before")
@click.option("--dry-run", is_flag=True, help="Show what would be added; write nothing.")
def replay_command(since: datetime, until: datetime | None, dry_run: bool) -> None:
    """Run stored deliveries (unrecognized ones too) through the current rules.

    Launches already stored are not added again, so replaying twice adds nothing.
    Delays and active hours count from now; cooldowns apply as for a new webhook.
    """
    from datetime import UTC, datetime

    from automation.store import replay

    ruleset = command_rules(Path(command_settings().rules_file))
    now = datetime.now(UTC)
    report = replay.replay(
        command_sessions(read_only=dry_run), ruleset, since, until, now, dry_run=dry_run
    )
    click.echo("\n".join(replay.describe_replay(report, dry_run)))
