"""`automation launches …`: the launch log (DATABASE_URL).

It needs no rules file: a broken one must not hide the log that would explain it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from automation.cli.common import (
    TZ_OPTION,
    command_sessions,
    command_settings,
    rules_path,
    statuses_option,
    time_option,
)
from automation.limits import MAX_ID
from automation.store.states import LaunchStatus

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime, tzinfo

    from automation.store.story import LaunchRecord
    from automation.store.transitions import Plan, Transition

#: The `LaunchStatus` values (`states` imports no database code, so `--help` stays quick).
LAUNCH_STATUSES = tuple(status.value for status in LaunchStatus)
#: Above this many launches, `retry` and `cancel` ask before changing anything.
CONFIRM_ABOVE = 10
#: Ids are 64-bit (SQLite cannot even bind a larger number): a larger one is an option
#: error that click names, not an OverflowError from the driver.
ID = click.IntRange(min=1, max=MAX_ID)
#: Most rows `list` prints; more is a job for SQL on the `launch_log` view.
MAX_LIMIT = 10_000
#: `list` counts the matching launches up to here ("50 of more than 100,000").
COUNT_CAP = 100_000


@click.group("launches")
def launches_group() -> None:
    """The launch log: list, explain, retry and cancel launches."""


@launches_group.command("list")
@statuses_option(LAUNCH_STATUSES, "launches")
@click.option("--rule", help="Only launches of this rule.")
@click.option("--bot", "bot_id", type=ID, help="Only launches of this Salesbot id.")
@click.option("--entity-id", type=ID, help="Only launches on this lead/contact/… id.")
@time_option("--since", "Created at or after")
@time_option("--until", "Created before")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1, max=MAX_LIMIT))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, for scripts.")
@TZ_OPTION
def launches_list(
    statuses: tuple[str, ...],
    rule: str | None,
    bot_id: int | None,
    entity_id: int | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
    zone: tzinfo,
) -> None:
    """Launches, newest first, as a table (times in DISPLAY_TIMEZONE or --tz; when a
    pending launch is due) or JSON (UTC, ISO 8601)."""
    from automation.store import launchlog, story
    from automation.web import schemas

    query = launchlog.LaunchQuery(
        tuple(LaunchStatus(status) for status in statuses),
        rule,
        bot_id,
        entity_id,
        since,
        until,
        limit,
    )
    sessions = command_sessions(read_only=True)
    with sessions() as session:
        rows = story.list_launches(session, query)
        codes = story.call_status_codes(session, rows) if as_json else {}
        total = (
            len(rows)
            if as_json or len(rows) < limit
            else story.count_launches(session, query, COUNT_CAP)
        )
    if as_json:
        click.echo(schemas.launches_json(rows, codes))
    elif not rows:
        click.echo("no launches match" + _unknown_rule(rule))
    else:
        lines = launchlog.format_table(rows, zone)
        footer = launchlog.count_footer(len(rows), total, COUNT_CAP)
        click.echo("\n".join([*lines, footer] if footer else lines))


def _unknown_rule(rule: str | None) -> str:
    """`; no rule 'x' in rules.yaml (did you mean 'y'?)` when --rule names no rule of
    the rules in use: a typo must not read as "nothing happened". Launches of a rule
    since removed still list, so this is said only when nothing matched; an unreadable
    rules file adds nothing (the log must not depend on it)."""
    from automation.errors import AutomationError
    from automation.rules.load import load_rules_file
    from automation.rules.yamlfile import did_you_mean

    if rule is None:
        return ""
    try:
        ruleset = load_rules_file(rules_path())
    except (AutomationError, OSError):
        return ""
    names = [r.name for r in ruleset.rules]
    if rule in names:
        return ""
    hint = did_you_mean(rule, names).removeprefix("; ")
    return f"; no rule {rule!r} in the rules in use ({ruleset.filename})" + (
        f", {hint}" if hint else ""
    )


@launches_group.command("show")
@click.argument("launch_id", metavar="ID", type=ID)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
@TZ_OPTION
def launches_show(launch_id: int, as_json: bool, zone: tzinfo) -> None:
    """The whole story of launch ID: its webhook, rule, every API call, and why it
    ended where it did."""
    from automation.store import launchlog, story
    from automation.web import schemas

    sessions = command_sessions(read_only=True)
    with sessions() as session:
        told = story.launch_story(session, launch_id)
    if told is None:
        raise click.ClickException(f"launch #{launch_id} does not exist")
    if as_json:
        lines = [schemas.story_json(told)]
    else:
        max_attempts = command_settings().amocrm_max_attempts
        lines = launchlog.describe_story(told, zone, max_attempts)
    click.echo("\n".join(lines))


@launches_group.command("retry")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=ID)
@click.option("--failed", is_flag=True, help="Every failed launch.")
@click.option(
    "--uncertain", is_flag=True, help="Every uncertain launch (may message customers twice)."
)
@time_option("--since", "With --failed/--uncertain: only those settled at or after")
@click.option("--yes", is_flag=True, help=f"Do not ask, even above {CONFIRM_ABOVE} launches.")
def launches_retry(
    ids: tuple[int, ...], failed: bool, uncertain: bool, since: datetime | None, yes: bool
) -> None:
    """Send failed, uncertain or cancelled launches again: back to pending, due now.

    An uncertain launch may have reached amoCRM already; retrying it can message the
    customer twice.
    """
    from automation.store.transitions import RETRY

    chosen = [LaunchStatus.FAILED] if failed else []
    chosen += [LaunchStatus.UNCERTAIN] if uncertain else []
    if bool(ids) == bool(chosen):
        raise click.UsageError("give launch IDs or --failed/--uncertain, one of the two")
    if ids and since is not None:
        raise click.UsageError("--since selects with --failed/--uncertain, not with IDs")
    _change(RETRY, ids, chosen, yes, settled_since=since)


@launches_group.command("cancel")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=ID)
@click.option("--pending", is_flag=True, help="Every pending launch.")
@click.option("--rule", help="With --pending: only launches of this rule.")
@click.option("--yes", is_flag=True, help=f"Do not ask, even above {CONFIRM_ABOVE} launches.")
def launches_cancel(ids: tuple[int, ...], pending: bool, rule: str | None, yes: bool) -> None:
    """Cancel pending launches so they are never sent."""
    from automation.store.transitions import CANCEL

    if bool(ids) == pending:
        raise click.UsageError("give launch IDs or --pending, one of the two")
    if ids and rule is not None:
        raise click.UsageError("--rule selects with --pending, not with IDs")
    _change(CANCEL, ids, [LaunchStatus.PENDING] if pending else [], yes, rule=rule)


def _change(
    transition: Transition,
    ids: Sequence[int],
    statuses: Sequence[LaunchStatus],
    yes: bool,
    *,
    rule: str | None = None,
    settled_since: datetime | None = None,
) -> None:
    """Plan, show, confirm, apply. No transaction stays open while the operator
    decides: on SQLite it would hold the write lock that webhooks wait for."""
    from datetime import UTC, datetime

    from automation.store import audit, transitions

    sessions = command_sessions()
    with sessions.begin() as session:
        if ids:
            plan = transitions.plan_by_ids(session, transition, ids)
        else:
            plan = transitions.plan_by_status(
                session, transition, statuses, rule=rule, settled_since=settled_since
            )
    ask = len(plan.targets) > CONFIRM_ABOVE and not yes
    _echo_plan(plan, preview=ask)
    if ask:
        click.confirm(f"{transition.verb} {len(plan.targets)} launches?", abort=True)
    with sessions.begin() as session:
        now = datetime.now(UTC)
        changed, missed = transitions.apply_plan(session, plan, now)
        if plan.targets:  # the console shows it on each launch, like its own actions
            audit.record(
                session,
                at=now,
                actor="cli",
                action=transition.verb,
                target=_target(ids, statuses, rule, settled_since),
                requested=len(plan.targets),
                changed=changed,
            )
    if not ask:  # a preview listed them already; otherwise list what did change
        done = set(changed)
        for row in plan.targets:
            if row.id in done:
                click.echo(_describe_change(plan, row))
    for message in missed:
        click.echo(message, err=True)
    click.echo(f"{transition.done} {len(changed)} launch(es)")
    if plan.refused or missed:
        raise click.exceptions.Exit(1)


def _target(
    ids: Sequence[int],
    statuses: Sequence[LaunchStatus],
    rule: str | None,
    settled_since: datetime | None,
) -> str:
    """What the command was asked to change, as the audit shows it."""
    if ids:
        shown = ", ".join(f"#{launch_id}" for launch_id in ids[:10])
        return f"launch {shown}" + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    words = ["every " + " or ".join(status.value for status in statuses) + " launch"]
    if rule is not None:
        words.append(f"of rule {rule!r}")
    if settled_since is not None:
        words.append(f"settled since {settled_since:%Y-%m-%d %H:%M:%S}Z")
    return " ".join(words)


def _echo_plan(plan: Plan, *, preview: bool) -> None:
    """Refusals, then (when the operator is to be asked) what would change, headed so
    that it cannot be read as done, then the warning about uncertain launches."""
    for message in plan.refused:
        click.echo(message, err=True)
    if preview:
        click.echo(f"would {plan.transition.verb} {len(plan.targets)} launches:")
        for row in plan.targets:
            click.echo(f"  {_describe_change(plan, row)}")
    if plan.uncertain:
        click.echo(
            f"warning: {plan.uncertain} of these launches are uncertain: amoCRM may have "
            "started them already, and sending them again may message those customers twice",
            err=True,
        )


def _describe_change(plan: Plan, row: LaunchRecord) -> str:
    return (
        f"launch #{row.id}: {row.status.value} → {plan.transition.to.value}  "
        f"({row.rule}: bot {row.bot_id} on {row.target})"
    )
