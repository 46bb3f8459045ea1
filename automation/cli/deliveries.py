"""`automation deliveries …`: find stored webhooks and explain what they started.

`list` answers "which webhooks were about lead 27754599?", `show` answers "why did
this one start no bot?" with the rules version that judged it on arrival. Both read
DATABASE_URL; `show` reads the rules file only when the stored version cannot judge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from automation.cli.common import command_rules, command_sessions, statuses_option, time_option
from automation.limits import MAX_ID

if TYPE_CHECKING:
    from datetime import datetime

    from automation.store.explain import DeliveryExplanation

ID = click.IntRange(min=1, max=MAX_ID)
#: The `DeliveryStatus` values, spelled out so that `--help` imports no database code.
DELIVERY_STATUSES = ("accepted", "unrecognized", "queued", "rejected")
MAX_LIMIT = 10_000


@click.group("deliveries")
def deliveries_group() -> None:
    """Stored webhooks: find them by lead or contact, and see why they did (not)
    start a bot."""


@deliveries_group.command("list")
@click.option("--entity-id", type=ID, help="Only webhooks naming this lead/contact/… id.")
@statuses_option(DELIVERY_STATUSES, "deliveries")
@time_option("--since", "Received at or after")
@time_option("--until", "Received before")
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
@click.option(
    "--events",
    "window",
    metavar="FROM:TO",
    callback=lambda _ctx, _param, value: _window(value),
    help="Show events FROM to TO-1 (counting from 0) and launches in the same window; "
    "default 0:50.",
)
@click.option("--event", "event", type=click.IntRange(min=0), help="Show event N alone.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def deliveries_show(
    delivery_id: int,
    current: bool,
    window: tuple[int, int] | None,
    event: int | None,
    as_json: bool,
) -> None:
    """Why delivery ID started the bots it did: each event, every rule on its type
    (matched or why not), judged with the rules version that judged it on arrival;
    then its launches. The first 50 events are shown, and every event counted by
    verdict. Writes nothing."""
    if event is not None:
        window = (event, event + 1)
    offset, end = window or (0, 50)
    explanation = load_explanation(
        delivery_id, use_current=current, offset=offset, limit=end - offset
    )
    if as_json:
        click.echo(explanation.model_dump_json())
    else:
        from automation.store.explain import describe_explanation

        click.echo("\n".join(describe_explanation(explanation)))


def _window(value: str | None) -> tuple[int, int] | None:
    """`FROM:TO` as (from, to), to past from."""
    if value is None:
        return None
    first, colon, end = value.partition(":")
    if not (colon and first.isdigit() and end.isdigit() and int(first) < int(end)):
        raise click.BadParameter(f"expected FROM:TO with 0 <= FROM < TO, got {value!r}")
    return int(first), int(end)


def load_explanation(
    delivery_id: int, *, use_current: bool = False, offset: int = 0, limit: int = 50
) -> DeliveryExplanation:
    """The explanation (events `offset` to `offset + limit - 1`), or a clean CLI error
    when the delivery is not stored."""
    from automation.cli.common import rules_path
    from automation.store.explain import explain_delivery

    with command_sessions(read_only=True)() as session:
        explanation = explain_delivery(
            session,
            delivery_id,
            lambda: command_rules(rules_path()),
            use_current=use_current,
            offset=offset,
            limit=limit,
        )
    if explanation is None:
        raise click.ClickException(f"delivery #{delivery_id}: not stored (never, or pruned since)")
    return explanation


__all__ = ["deliveries_group", "load_explanation"]
