"""`automation rules …`: check rules files and try them on saved webhooks.

`check`, `schema` and `test` read files only: no settings, database or app needed.
`diff`, `status` and `test --delivery` read the database (DATABASE_URL).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from automation.cli.common import command_rules, command_sessions, rules_path, time_option
from automation.errors import AutomationError
from automation.limits import MAX_ID

if TYPE_CHECKING:
    from datetime import datetime

    from automation.rules.load import PlannedChats, RuleSet


@click.group("rules")
def rules_group() -> None:
    """Check rules files and try them on saved webhooks.

    `check`, `schema` and `test` on files need no database; `diff` and
    `test --delivery` read stored deliveries from DATABASE_URL.
    """


@rules_group.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Warnings fail the check too (exit 1).")
def rules_check(files: tuple[Path, ...], strict: bool) -> None:
    """Validate rules FILES (default: $RULES_FILE or rules.yaml).

    Prints the rules per event type and warnings (condition fields no event of the
    rule is known to carry, rules that can interrupt each other), which do not fail
    the check unless --strict; exits 1 listing every error with file:line:column.
    """
    from automation.rules.load import load_rules_file

    failed = False
    for path in files or (rules_path(),):
        try:
            ruleset = load_rules_file(path)
        except AutomationError as exc:
            click.echo(str(exc), err=True)
            failed = True
            continue
        warned = _echo_summary(ruleset)
        failed = failed or (strict and warned)
    if failed:
        raise click.exceptions.Exit(1)


def _echo_summary(ruleset: RuleSet) -> bool:
    """Print a loaded file's summary and warnings; True when there were warnings."""
    disabled = sum(not rule.enabled for rule in ruleset.rules)
    click.echo(f"{ruleset.filename}: ok, {len(ruleset)} rules ({disabled} disabled)")
    summary = ruleset.summary()
    width = max((len(event_type) for event_type in summary), default=0)
    for event_type, count in summary.items():
        click.echo(f"  {event_type:<{width}}  {count}")
    warnings = [*ruleset.warnings, *ruleset.conflicts()]
    for warning in warnings:
        click.echo(f"warning: {warning}")
    return bool(warnings)


@rules_group.command("status")
def rules_status() -> None:
    """Which rules version $RULES_FILE is, whether a server stored it, and the versions
    stored last (deliveries and launches record the version that judged them)."""
    from automation.store.versions import find_version, recent_versions

    ruleset = command_rules(rules_path())
    with command_sessions()() as session:
        stored = find_version(session, ruleset.content_hash)
        recent = recent_versions(session)
    click.echo(f"{ruleset.filename}: sha256 {ruleset.content_hash[:12]}, {len(ruleset)} rules")
    if stored is None:
        click.echo(
            "  not stored yet: no server has loaded this content (it will at its next reload)"
        )
    else:
        click.echo(f"  stored as version {stored.describe()}")
    for version in recent:
        click.echo(f"version {version.describe()}")


@rules_group.command("schema")
def rules_schema() -> None:
    """Print the JSON Schema of rules files, with which editors complete keys and flag
    mistakes. The repository keeps a copy, rules.schema.json; regenerate it with
    `automation rules schema > rules.schema.json`."""
    from automation.rules.schema import schema_text

    click.echo(schema_text(), nl=False)


@rules_group.command("test")
@click.argument("payloads", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Rules file (default: the cases file's `rules:`, $RULES_FILE or rules.yaml).",
)
@click.option("--at", metavar="TIME", help="Evaluate as of this moment (ISO 8601; naive is UTC).")
@click.option(
    "--cases",
    "cases_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of cases with expected launches; exit 1 if any fails.",
)
@click.option(
    "--delivery",
    "deliveries",
    multiple=True,
    type=click.IntRange(1, MAX_ID),
    metavar="ID",
    help="A webhook stored in DATABASE_URL (repeatable); judged as of its arrival, with "
    "the rules version that judged it then, unless --at or --current say otherwise.",
)
@click.option(
    "--current",
    is_flag=True,
    help="With --delivery: judge with today's rules file, not the stored version.",
)
def rules_test(
    payloads: tuple[Path, ...],
    rules_file: Path | None,
    at: str | None,
    cases_file: Path | None,
    deliveries: tuple[int, ...],
    current: bool,
) -> None:
    """Show which rules match saved webhook PAYLOADS (or stored deliveries) and
    which launches result.

    Writes nothing. A payload is amoCRM's raw form body, or JSON when it starts
    with `{`. Rules on other event types are not shown. Payloads given together are
    judged as if they arrived in that order, so one bot per chat shows across them.
    """
    if bool(payloads or deliveries) == bool(cases_file):
        raise click.UsageError("give payload files or --delivery ID, or --cases FILE alone")
    now = _match_time(at)
    if cases_file is not None:
        _run_cases(cases_file, rules_file, now)
        return
    from automation.rules.load import PlannedChats

    if current and not deliveries:
        raise click.UsageError("--current only applies to --delivery")
    today = functools.cache(lambda: command_rules(rules_path(rules_file)))
    chats = PlannedChats()
    for path in payloads:
        _show_payload(today(), str(path), _read(path), (now, now), chats)
    for label, body, received_at, ruleset in _stored(deliveries, today, current):
        moments = (now if at else received_at, received_at)
        _show_payload(ruleset, label, body, moments, chats)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror}") from exc


def _stored(
    ids: tuple[int, ...], today: Callable[[], RuleSet], use_current: bool
) -> list[tuple[str, bytes, datetime, RuleSet]]:
    """The bodies of stored deliveries and the rules that judged them on arrival (or
    today's, saying why), to answer "why did my bot not start?"."""
    if not ids:
        return []
    from automation.store.explain import describe_rules, stored_body

    found = []
    with command_sessions(read_only=True)() as session:
        for delivery_id in ids:
            told = stored_body(session, delivery_id, today, use_current=use_current)
            if told is None:
                raise click.ClickException(
                    f"delivery #{delivery_id}: not stored (never, or pruned since)"
                )
            click.echo(f"delivery #{delivery_id}: rules {describe_rules(told.rules_used)}")
            found.append((f"delivery #{delivery_id}", told.body, told.received_at, told.rules))
    return found


def _match_time(at: str | None) -> datetime:
    from datetime import UTC, datetime

    from automation.rules.load import check_moment, parse_instant

    if at is None:
        return datetime.now(UTC)
    try:
        return check_moment(parse_instant(at))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--at'") from exc


def _show_payload(
    ruleset: RuleSet,
    label: str,
    body: bytes,
    moments: tuple[datetime, datetime],
    chats: PlannedChats,
) -> None:
    """Match a body's events at `moments[0]`; it arrived (or is taken to) at `moments[1]`.
    `chats` holds the launches of the payloads shown before (one bot per chat)."""
    import json

    from automation.rules.load import (
        busy_in_payload,
        decode_payload,
        describe_event,
        describe_launch,
        launch_key,
    )

    now, received_at = moments
    try:
        payload = decode_payload(body, received_at)
    except AutomationError as exc:
        raise click.ClickException(f"{label}: {exc}") from exc
    click.echo(f"{label}: {len(payload.events)} event(s), at {now.isoformat()}")
    busy = busy_in_payload(ruleset, payload, now, chats)
    for event in payload.events:
        click.echo(f"event {describe_event(event)}")
        click.echo(f"  data: {json.dumps(event.data, ensure_ascii=False, default=str)}")
        decisions = ruleset.explain(event, now)
        if not decisions:
            click.echo(f"  no rules listen to {event.type}")
        for decision in decisions:
            click.echo(f"  rule {decision.rule}: {decision.reason}")
        for decision in decisions:
            if decision.launch is not None:
                held = busy.get(launch_key(decision.launch))
                shown = f"; {held.reason}" if held else ""
                click.echo(f"  launch {describe_launch(decision.launch)}{shown}")


def _run_cases(cases_file: Path, rules_file: Path | None, now: datetime) -> None:
    from automation.rules.load import load_cases_file, run_case

    cases = load_cases_file(cases_file)
    ruleset = command_rules(rules_file or cases.rules or rules_path())
    failed = 0
    for case in cases.cases:
        result = run_case(ruleset, case, now)
        click.echo(f"{'PASS' if result.passed else 'FAIL'}  {result.name}")
        if not result.passed:
            failed += 1
            lines = [result.error] if result.error else ["--- expected", "+++ actual", *result.diff]
            for line in lines:
                click.echo(f"    {line}")
    total = len(cases.cases)
    click.echo(f"{total} cases: {total - failed} passed, {failed} failed")
    if failed:
        raise click.exceptions.Exit(1)


@rules_group.command("diff")
@click.argument("new_rules", type=click.Path(dir_okay=False, path_type=Path))
@time_option("--since", "Received at or after", default="7d", show_default=True)
@time_option("--until", "Received before")
def rules_diff(new_rules: Path, since: datetime, until: datetime | None) -> None:
    """Which launches NEW_RULES would add or drop, compared with the rules in use
    ($RULES_FILE), on the deliveries stored in the period. Writes nothing.

    Launches compare by rule, bot, entity and change, ignoring times; each delivery
    is judged as of when it arrived, and cooldowns are not applied. Needs DATABASE_URL.
    Exits 0 when the launches are the same, 1 when they differ (like diff).
    """
    from automation.store import replay

    old, new = command_rules(rules_path()), command_rules(new_rules)
    diff = replay.diff_rules(command_sessions(read_only=True), old, new, since, until)
    click.echo("\n".join(replay.describe_diff(diff, old.filename, new.filename)))
    if diff.added or diff.dropped:
        raise SystemExit(1)  # like diff(1): 0 the same, 1 different, 2 trouble
