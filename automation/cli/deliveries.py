"""`automation deliveries …`: find stored webhooks and explain what they started.

`list` answers "which webhooks were about lead 27754599?", `show` answers "why did
this one start no bot?" with the rules version that judged it on arrival. Both read
DATABASE_URL; `show` reads the rules file only when the stored version cannot judge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from automation.cli.common import command_rules, command_sessions, parse_time_option
from automation.limits import MAX_ID

if TYPE_CHECKING:
    from datetime import datetime

    from automation.store.explain import DeliveryExplanation, RuleVerdict

ID = click.IntRange(min=1, max=MAX_ID)
#: The `DeliveryStatus` values, spelled out so that `--help` imports no database code.
DELIVERY_STATUSES = ("accepted", "unrecognized")
MAX_LIMIT = 10_000


@click.group("deliveries")
def deliveries_group() -> None:
    """Stored webhooks: find them by lead or contact, and see why they did (not)
    start a bot."""


@deliveries_group.command("list")
@click.option("--entity-id", type=ID, help="Only webhooks naming this lead/contact/… id.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(DELIVERY_STATUSES),
    help="Only deliveries in this status (repeat for several).",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=parse_time_option,
    help="Received at or after: 2h, 3d or ISO 8601.",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=parse_time_option,
    help="Received before: 2h, 3d or ISO 8601.",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1, max=MAX_LIMIT))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, for scripts.")
def deliveries_list(
    entity_id: int | None,
    statuses: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Stored webhooks, newest first, as a table (times in UTC) or JSON."""
    import json

    from automation.store.deliveries import DeliveryQuery, format_deliveries, list_deliveries
    from automation.store.states import DeliveryStatus

    query = DeliveryQuery(
        entity_id, tuple(DeliveryStatus(s) for s in statuses), since, until, limit
    )
    with command_sessions(read_only=True)() as session:
        rows = list_deliveries(session, query).deliveries
    if as_json:
        click.echo(json.dumps([row.model_dump(mode="json") for row in rows], ensure_ascii=False))
    elif not rows:
        click.echo("no deliveries match")
    else:
        click.echo("\n".join(format_deliveries(rows)))


@deliveries_group.command("show")
@click.argument("delivery_id", metavar="ID", type=ID)
@click.option("--current", is_flag=True, help="Judge with today's rules file instead.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def deliveries_show(delivery_id: int, current: bool, as_json: bool) -> None:
    """Why delivery ID started the bots it did: every event, every rule on its type
    (matched or why not), judged with the rules version that judged it on arrival;
    then its launches. Writes nothing."""
    explanation = load_explanation(delivery_id, use_current=current)
    if as_json:
        click.echo(explanation.model_dump_json())
    else:
        click.echo("\n".join(describe_explanation(explanation)))


def load_explanation(delivery_id: int, *, use_current: bool = False) -> DeliveryExplanation:
    """The explanation, or a clean CLI error when the delivery is not stored."""
    from automation.cli.common import rules_path
    from automation.store.explain import explain_delivery

    with command_sessions(read_only=True)() as session:
        explanation = explain_delivery(
            session, delivery_id, lambda: command_rules(rules_path()), use_current=use_current
        )
    if explanation is None:
        raise click.ClickException(f"delivery #{delivery_id}: not stored (never, or pruned since)")
    return explanation


def describe_explanation(explanation: DeliveryExplanation) -> list[str]:
    """The explanation as text: the delivery, the rules, each event and rule, launches."""
    from automation.store.explain import describe_rules

    d = explanation.delivery
    entities = ", ".join(f"{e.type} {e.id}" for e in d.entities) or "none"
    lines = [
        f"delivery #{d.id} received {d.received_at:%Y-%m-%d %H:%M:%S}Z, {d.status.value}: "
        f"{d.events} event(s), {d.launches} launch(es), {d.duplicates} duplicate(s)",
        f"  entities: {entities}",
        f"  rules: {describe_rules(explanation.rules)}",
    ]
    if explanation.decode_error:
        lines.append(f"  body no longer decodes: {explanation.decode_error}")
    for event in explanation.events:
        named = ", ".join(f"{kind} {number}" for kind, number in event.entities.items())
        lines.append(f"event {event.index} {event.type} ({event.group}) on {named or 'no entity'}")
        if not event.rules:
            lines.append(f"  no rules listen to {event.type}")
        lines += [f"  {line}" for verdict in event.rules for line in _describe_verdict(verdict)]
    if not explanation.launches:
        lines.append("launches: none")
    for launch in explanation.launches:
        version = "-" if launch.rules_version_id is None else f"#{launch.rules_version_id}"
        lines.append(
            f"launch #{launch.id} {launch.status.value}: rule {launch.rule}, bot {launch.bot_id} "
            f"on {launch.entity or '?'} {launch.entity_id} (rules {version})"
            + (f": {launch.reason}" if launch.reason else "")
        )
    return lines


def _describe_verdict(verdict: RuleVerdict) -> list[str]:
    """`rule NAME: VERDICT — detail`, then one line per failed condition."""
    from automation.store.explain import Verdict

    head = f"rule {verdict.rule}: {verdict.verdict.value}"
    detail = {
        Verdict.LAUNCHED: f"launch #{verdict.launch_id} ({verdict.reason})",
        Verdict.COOLDOWN: f"launch #{verdict.launch_id} skipped: earlier launch "
        f"#{verdict.earlier_launch_id} inside the cooldown",
        Verdict.DUPLICATE: f"this change already has launch #{verdict.launch_id}",
        Verdict.BUSY: f"launch #{verdict.launch_id} yielded to launch "
        f"#{verdict.earlier_launch_id}, another bot on the same chat",
        Verdict.NOT_STORED: "would launch, but no such launch is stored",
        Verdict.STOPPED: f"rule {verdict.stopped_by!r} matched first and has stop: true",
    }.get(verdict.verdict, verdict.reason)
    lines = [head if verdict.failed_conditions else f"{head}: {detail}"]
    for failed in verdict.failed_conditions:
        got = "missing" if failed.got is None else failed.got
        lines.append(f"    {failed.field}: expected {failed.expected}, got {got}")
    hours = verdict.hours
    if hours is not None:
        lines.append(
            f"    local time {hours.local_time:%a %Y-%m-%d %H:%M} {hours.zone}; "
            f"next opening {hours.next_open.astimezone(hours.local_time.tzinfo):%a %Y-%m-%d %H:%M}"
            f" ({hours.next_open:%Y-%m-%d %H:%M}Z)"
        )
    return lines


__all__ = ["deliveries_group", "describe_explanation", "load_explanation"]
