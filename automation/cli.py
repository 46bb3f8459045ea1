"""The `automation` command line (also reachable as `flask --app wsgi …`).

Each command is a thin wrapper over library functions; output goes through
`click.echo` here and nowhere else. `--help` and the rules commands need no database.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from automation.config import Settings, load_settings
from automation.errors import AutomationError

if TYPE_CHECKING:
    from datetime import datetime

    from automation.rules import RuleSet
    from automation.runtime import Runtime


@click.group()
def main() -> None:
    """amoCRM automation server: webhooks in, Salesbot launches out."""


# ------------------------------------------------------------------ server commands


def _settings() -> Settings:
    try:
        return load_settings()
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


def _runtime() -> Runtime:
    """The server's runtime (database checked, rules loaded), or a clean CLI error."""
    from automation.logs import configure_logging
    from automation.runtime import Runtime

    settings = _settings()
    configure_logging(settings.log_format)
    try:
        state = Runtime.build(settings)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    # Close the pool when the command ends, not whenever the garbage collector runs.
    click.get_current_context().call_on_close(state.engine.dispose)
    return state


@main.group("db")
def db() -> None:
    """Database schema (Alembic migrations in migrations/)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date (DATABASE_URL)."""
    from automation.database import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}: {_safe_url(settings.database_url)}")


@main.command("dispatch")
@click.option("--once", is_flag=True, help="Send everything due now, then exit.")
def dispatch_command(once: bool) -> None:
    """Send stored launches to amoCRM until SIGTERM/SIGINT (or, with --once, until none is due)."""
    from automation import dispatcher

    state = _runtime()
    try:
        worker = dispatcher.build(state.settings, state.sessions)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    try:
        stats = worker.run(once=once)
    except dispatcher.NotAlone as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"calls={stats.calls} sent={stats.sent} dry_run={stats.dry_run} failed={stats.failed} "
        f"retried={stats.retried} uncertain={stats.uncertain}"
    )


@main.command("serve")
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="Address to listen on.")
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes.")
@click.option(
    "--dispatcher/--no-dispatcher",
    default=True,
    show_default=True,
    help="Also run one dispatcher process.",
)
def serve(bind: str, workers: int, dispatcher: bool) -> None:
    """Start the web server (gunicorn) and one dispatcher: the one-command start."""
    from automation.serving import run_server

    state = _runtime()  # fail here, clearly, before any worker starts
    state.engine.dispose()
    click.echo(
        f"serving on http://{bind}  webhook URL: http://{bind}/webhooks/amocrm/<WEBHOOK_SECRET>/"
        f"  dry_run={state.settings.is_dry_run}"
    )
    run_server(bind, workers, with_dispatcher=dispatcher)


@main.group("auth")
def auth() -> None:
    """amoCRM OAuth 2.0 tokens."""


@auth.command("exchange")
@click.argument("code")
def auth_exchange(code: str) -> None:
    """Turn an authorization CODE into tokens stored in the database."""
    from automation.tokens import exchange_code

    state = _runtime()
    try:
        tokens = exchange_code(state.settings, state.sessions, code)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"tokens stored; the access token expires at {tokens.expires_at:%Y-%m-%d %H:%M}Z")


@main.group("config")
def config_group() -> None:
    """The settings in effect."""


@config_group.command("show")
def config_show() -> None:
    """Print the settings read from the environment and .env, secrets masked."""
    for name, value in _settings().masked().items():
        click.echo(f"{name}={'' if value is None else value}")


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------- rules
# `automation rules …` reads files only: no settings, database or app needed.


@main.group("rules")
def rules_group() -> None:
    """Check rules files and try them on saved webhooks (no database needed)."""


def _rules_path(given: Path | None = None) -> Path:
    """`given`, else RULES_FILE from the environment or `.env` (as the server reads it)."""
    from dotenv import dotenv_values

    found = os.environ.get("RULES_FILE") or dotenv_values(".env").get("RULES_FILE")
    return given or Path(found or "rules.yaml")


def _load_rules(path: Path) -> RuleSet:
    from automation.rules import load_rules_file

    try:
        return load_rules_file(path)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


@rules_group.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def rules_check(files: tuple[Path, ...]) -> None:
    """Validate rules FILES (default: $RULES_FILE or rules.yaml).

    Prints the rules per event type and conflict warnings (which do not fail the
    check); exits 1 listing every error with file:line:column.
    """
    from automation.rules import load_rules_file

    failed = False
    for path in files or (_rules_path(),):
        try:
            ruleset = load_rules_file(path)
        except AutomationError as exc:
            click.echo(str(exc), err=True)
            failed = True
            continue
        _echo_summary(ruleset)
    if failed:
        raise click.exceptions.Exit(1)


def _echo_summary(ruleset: RuleSet) -> None:
    disabled = sum(not rule.enabled for rule in ruleset.rules)
    click.echo(f"{ruleset.filename}: ok, {len(ruleset)} rules ({disabled} disabled)")
    summary = ruleset.summary()
    width = max((len(event_type) for event_type in summary), default=0)
    for event_type, count in summary.items():
        click.echo(f"  {event_type:<{width}}  {count}")
    for warning in ruleset.conflicts():
        click.echo(f"warning: {warning}")


@rules_group.command("schema")
def rules_schema() -> None:
    """Print the JSON Schema of rules files, with which editors complete keys and flag
    mistakes. The repository keeps a copy, rules.schema.json; regenerate it with
    `automation rules schema > rules.schema.json`."""
    from automation.rules_schema import schema_text

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
def rules_test(
    payloads: tuple[Path, ...], rules_file: Path | None, at: str | None, cases_file: Path | None
) -> None:
    """Show which rules match saved webhook PAYLOADS and which launches result.

    Writes nothing. A payload is amoCRM's raw form body, or JSON when it starts
    with `{`. Rules on other event types are not shown.
    """
    if bool(payloads) == bool(cases_file):
        raise click.UsageError("give payload files or --cases FILE, one of the two")
    now = _moment(at)
    if cases_file is not None:
        _run_cases(cases_file, rules_file, now)
        return
    ruleset = _load_rules(_rules_path(rules_file))
    for path in payloads:
        _show_payload(ruleset, path, now)


def _moment(at: str | None) -> datetime:
    from datetime import UTC, datetime

    from automation.rules import parse_instant

    if at is None:
        return datetime.now(UTC)
    try:
        return parse_instant(at)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--at'") from exc


def _show_payload(ruleset: RuleSet, path: Path, now: datetime) -> None:
    import json

    from automation.rules import decode_payload, describe_event, describe_launch

    try:
        payload = decode_payload(path.read_bytes().strip())
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror}") from exc
    except AutomationError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    click.echo(f"{path}: {len(payload.events)} event(s), at {now.isoformat()}")
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
                click.echo(f"  launch {describe_launch(decision.launch)}")


def _run_cases(cases_file: Path, rules_file: Path | None, now: datetime) -> None:
    from automation.rules import load_cases_file, run_case

    try:
        cases = load_cases_file(cases_file)
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc
    ruleset = _load_rules(rules_file or cases.rules or _rules_path())
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


# ---------------------------------------------------------------------- launch log
# `launches …`, `replay` and `rules diff` read the database (DATABASE_URL). `launches`
# needs no rules file: a broken one must not hide the log that would explain it.

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.orm import Session, sessionmaker

    from automation.launchlog import Plan, Transition
    from automation.models import LaunchStatus

#: The `LaunchStatus` values, spelled out so that `--help` imports no database code.
LAUNCH_STATUSES = (
    "pending",
    "sending",
    "sent",
    "failed",
    "uncertain",
    "dry_run",
    "cancelled",
    "skipped",
)
#: Above this many launches, `retry` and `cancel` ask before changing anything.
CONFIRM_ABOVE = 10


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Option callback: `2h`, `3d` (that long ago) or an ISO 8601 date or time."""
    from datetime import UTC, datetime

    from automation.launchlog import parse_moment

    if value is None:
        return None
    try:
        return parse_moment(value, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def _database() -> sessionmaker[Session]:
    """Sessions on DATABASE_URL, its schema checked as the server checks it.

    The engine is closed when the command ends (click closes its context), so no
    connection outlives the command, in a process or under CliRunner.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from automation.database import ensure_schema, make_engine, make_session_factory

    settings = _settings()
    engine = make_engine(settings.database_url)
    click.get_current_context().call_on_close(engine.dispose)
    try:
        ensure_schema(engine)
    except (AutomationError, SQLAlchemyError) as exc:
        url = _safe_url(settings.database_url)
        raise click.ClickException(f"database {url}: {exc}") from exc
    return make_session_factory(engine)


@main.group("launches")
def launches_group() -> None:
    """The launch log: list, explain, retry and cancel launches."""


@launches_group.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(LAUNCH_STATUSES),
    help="Only launches in this status (repeat for several).",
)
@click.option("--rule", help="Only launches of this rule.")
@click.option("--bot", "bot_id", type=int, help="Only launches of this Salesbot id.")
@click.option("--entity-id", type=int, help="Only launches on this lead/contact/… id.")
@click.option(
    "--since",
    metavar="TIME",
    callback=_time_option,
    help="Created at or after: 2h, 3d or an ISO 8601 time.",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=_time_option,
    help="Created before: 2h, 3d or an ISO 8601 time.",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, for scripts.")
def launches_list(
    statuses: tuple[str, ...],
    rule: str | None,
    bot_id: int | None,
    entity_id: int | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Launches, newest first, as a table (times in UTC) or JSON."""
    from automation import launchlog
    from automation.models import LaunchStatus

    query = launchlog.LaunchQuery(
        tuple(LaunchStatus(status) for status in statuses),
        rule,
        bot_id,
        entity_id,
        since,
        until,
        limit,
    )
    sessions = _database()
    with sessions() as session:
        rows = launchlog.list_launches(session, query)
    if as_json:
        click.echo(launchlog.to_json(rows))
    elif not rows:
        click.echo("no launches match")
    else:
        click.echo("\n".join(launchlog.format_table(rows)))


@launches_group.command("show")
@click.argument("launch_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def launches_show(launch_id: int, as_json: bool) -> None:
    """The whole story of launch ID: its webhook, rule, every API call, and why it
    ended where it did."""
    from automation import launchlog

    sessions = _database()
    with sessions() as session:
        story = launchlog.show_launch(session, launch_id)
    if story is None:
        raise click.ClickException(f"launch #{launch_id} does not exist")
    lines = [launchlog.to_json(story)] if as_json else launchlog.describe_story(story)
    click.echo("\n".join(lines))


@launches_group.command("retry")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--failed", is_flag=True, help="Every failed launch.")
@click.option(
    "--uncertain", is_flag=True, help="Every uncertain launch (may message customers twice)."
)
@click.option(
    "--since",
    metavar="TIME",
    callback=_time_option,
    help="With --failed/--uncertain: only those settled since.",
)
@click.option("--yes", is_flag=True, help=f"Do not ask, even above {CONFIRM_ABOVE} launches.")
def launches_retry(
    ids: tuple[int, ...], failed: bool, uncertain: bool, since: datetime | None, yes: bool
) -> None:
    """Send failed, uncertain or cancelled launches again: back to pending, due now.

    An uncertain launch may have reached amoCRM already; retrying it can message the
    customer twice.
    """
    from automation.launchlog import RETRY
    from automation.models import LaunchStatus

    chosen = [LaunchStatus.FAILED] if failed else []
    chosen += [LaunchStatus.UNCERTAIN] if uncertain else []
    if bool(ids) == bool(chosen):
        raise click.UsageError("give launch IDs or --failed/--uncertain, one of the two")
    if ids and since is not None:
        raise click.UsageError("--since selects with --failed/--uncertain, not with IDs")
    _change(RETRY, ids, chosen, yes, settled_since=since)


@launches_group.command("cancel")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--pending", is_flag=True, help="Every pending launch.")
@click.option("--rule", help="With --pending: only launches of this rule.")
@click.option("--yes", is_flag=True, help=f"Do not ask, even above {CONFIRM_ABOVE} launches.")
def launches_cancel(ids: tuple[int, ...], pending: bool, rule: str | None, yes: bool) -> None:
    """Cancel pending launches so they are never sent."""
    from automation.launchlog import CANCEL
    from automation.models import LaunchStatus

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

    from automation import launchlog

    sessions = _database()
    with sessions.begin() as session:
        if ids:
            plan = launchlog.plan_by_ids(session, transition, ids)
        else:
            plan = launchlog.plan_by_status(
                session, transition, statuses, rule=rule, settled_since=settled_since
            )
    _echo_plan(plan)
    if len(plan.targets) > CONFIRM_ABOVE and not yes:
        click.confirm(f"{transition.verb} {len(plan.targets)} launches?", abort=True)
    with sessions.begin() as session:
        changed, missed = launchlog.apply_plan(session, plan, datetime.now(UTC))
    for message in missed:
        click.echo(message, err=True)
    click.echo(f"{transition.done} {len(changed)} launch(es)")
    if plan.refused or missed:
        raise click.exceptions.Exit(1)


def _echo_plan(plan: Plan) -> None:
    for message in plan.refused:
        click.echo(message, err=True)
    for row in plan.targets:
        click.echo(
            f"launch #{row.id}: {row.status.value} → {plan.transition.to.value}  "
            f"({row.rule}: bot {row.bot_id} on {row.entity})"
        )
    if plan.uncertain:
        click.echo(
            f"warning: {plan.uncertain} of these launches are uncertain: amoCRM may have "
            "started them already, and sending them again may message those customers twice",
            err=True,
        )


@main.command("replay")
@click.option(
    "--since",
    metavar="TIME",
    callback=_time_option,
    required=True,
    help="Received at or after: 2h, 3d, ISO.",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=_time_option,
    help="Received before: 2h, 3d or an ISO 8601 time.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be added; write nothing.")
def replay_command(since: datetime, until: datetime | None, dry_run: bool) -> None:
    """Run stored deliveries (unrecognized ones too) through the current rules.

    Launches already stored are not added again, so replaying twice adds nothing.
    Delays and active hours count from now; cooldowns apply as for a new webhook.
    """
    from datetime import UTC, datetime

    from automation import replay

    ruleset = _load_rules(Path(_settings().rules_file))
    now = datetime.now(UTC)
    report = replay.replay(_database(), ruleset, since, until, now, dry_run=dry_run)
    click.echo("\n".join(replay.describe_replay(report, dry_run)))


@rules_group.command("diff")
@click.argument("new_rules", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--since",
    metavar="TIME",
    callback=_time_option,
    default="7d",
    show_default=True,
    help="Received since.",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=_time_option,
    help="Received before: 2h, 3d or an ISO 8601 time.",
)
def rules_diff(new_rules: Path, since: datetime, until: datetime | None) -> None:
    """Which launches NEW_RULES would add or drop, compared with the rules in use
    ($RULES_FILE), on the deliveries stored in the period. Writes nothing.

    Launches compare by rule, bot, entity and change, ignoring times; each delivery
    is judged as of when it arrived, and cooldowns are not applied. Needs DATABASE_URL.
    """
    from automation import replay

    old, new = _load_rules(_rules_path()), _load_rules(new_rules)
    diff = replay.diff_rules(_database(), old, new, since, until)
    click.echo("\n".join(replay.describe_diff(diff, old.filename, new.filename)))


# ------------------------------------------------- webhook subscriptions and retention
# `webhooks …` calls amoCRM's /api/v4/webhooks with the dispatcher's token (it must be
# an account admin's). `prune` deletes old rows. Both read the rules: which events they
# need, and how long a cooldown still counts a sent launch.

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import timedelta

    from sqlalchemy.orm import Session, sessionmaker

    from automation.amocrm import AmoCRMClient
    from automation.subscriptions import SyncPlan, Webhook, WebhookUrl


@contextmanager
def _operator_errors() -> Iterator[None]:
    """Our errors as one clean line (they never carry a token), no traceback."""
    try:
        yield
    except AutomationError as exc:
        raise click.ClickException(str(exc)) from exc


def _webhooks_client(settings: Settings, sessions: sessionmaker[Session]) -> AmoCRMClient:
    """A client with the dispatcher's token (refreshed through the database with OAuth)."""
    from automation.amocrm import AmoCRMClient
    from automation.tokens import TokenStore

    if settings.amocrm_url is None:
        raise click.ClickException(
            "managing webhooks needs AMOCRM_SUBDOMAIN or AMOCRM_BASE_URL, and an admin's token"
        )
    tokens = TokenStore(settings, sessions)
    return AmoCRMClient(settings.amocrm_url, tokens.access_token)


def _secret(settings: Settings) -> str | None:
    return settings.webhook_secret.get_secret_value() if settings.webhook_secret else None


def _names(settings: Sequence[str]) -> str:
    return ", ".join(settings) or "none"


@main.group("webhooks")
def webhooks_group() -> None:
    """amoCRM's webhook subscription for this server: sync it with the rules, check it."""


@webhooks_group.command("sync")
@click.argument("url")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing in amoCRM.")
def webhooks_sync(url: str, dry_run: bool) -> None:
    """Subscribe URL to exactly the amoCRM events the rules need, and nothing else.

    URL is the full webhook URL (https://host/webhooks/amocrm/<WEBHOOK_SECRET>/) or the
    server's base URL (https://host), which WEBHOOK_SECRET completes. Needs an account
    administrator's token (AMOCRM_ACCESS_TOKEN or OAuth tokens in the database).
    """
    from automation import subscriptions

    settings = _settings()
    with _operator_errors():
        target = subscriptions.webhook_url(url, _secret(settings))
    ruleset = _load_rules(Path(settings.rules_file))
    with _operator_errors(), _webhooks_client(settings, _database()) as client:
        current = subscriptions.find_webhook(client, target.url)
        plan = subscriptions.plan_sync(target.url, ruleset.event_types(), current)
        _echo_sync_plan(plan, target)
        if not dry_run:
            subscriptions.apply_plan(client, plan)
    click.echo(_sync_outcome(plan, dry_run))


def _echo_sync_plan(plan: SyncPlan, target: WebhookUrl) -> None:
    built = " (built from the base URL and WEBHOOK_SECRET)" if target.built else ""
    click.echo(f"webhook URL: {target.shown}{built}")
    click.echo(f"rules need: {_names(plan.wanted)}")
    click.echo(f"subscribed now: {_names(plan.current.settings) if plan.current else 'not at all'}")
    click.echo(f"add: {_names(plan.added)}")
    click.echo(f"remove: {_names(plan.removed)}")
    for event_type in plan.unmapped:
        click.echo(
            f"warning: amoCRM has no webhook for {event_type}; rules on it never fire",
            err=True,
        )
    if plan.current and plan.current.disabled:
        click.echo(
            "warning: amoCRM has disabled this webhook; see `automation webhooks status`",
            err=True,
        )


def _sync_outcome(plan: SyncPlan, dry_run: bool) -> str:
    if plan.action == "none":
        return "nothing to change"
    if dry_run:
        return f"dry run: would {plan.action}; nothing changed"
    if plan.action == "unsubscribe":
        return "unsubscribed: no rule needs an amoCRM webhook"
    return "subscribed" if plan.action == "subscribe" else "settings updated"


@webhooks_group.command("status")
@click.argument("url", required=False)
def webhooks_status(url: str | None) -> None:
    """Show amoCRM's subscription for this server and when the last webhook arrived.

    Without URL, every webhook of the account pointing at /webhooks/amocrm/
    <WEBHOOK_SECRET>/ is shown. Exits 1 when there is none or amoCRM disabled one.
    """
    from automation import subscriptions

    settings = _settings()
    secret = _secret(settings)
    if url is None and secret is None:
        raise click.UsageError("give the webhook URL, or set WEBHOOK_SECRET to find it")
    with _operator_errors():
        target = subscriptions.webhook_url(url, secret).url if url is not None else None
    sessions = _database()
    with _operator_errors(), _webhooks_client(settings, sessions) as client:
        if target is not None:
            found = subscriptions.find_webhook(client, target)
            webhooks = [found] if found else []
        else:
            webhooks = subscriptions.find_ours(client, secret or "")
    event_types = _rules_event_types(settings)
    for webhook in webhooks:
        _echo_webhook(webhook, secret, event_types)
    click.echo(f"last webhook stored: {_last_webhook_text(sessions)}")
    if not webhooks:
        click.echo("no amoCRM webhook points at this server: run `automation webhooks sync URL`")
    if not webhooks or any(webhook.disabled for webhook in webhooks):
        raise click.exceptions.Exit(1)


def _echo_webhook(webhook: Webhook, secret: str | None, event_types: set[str] | None) -> None:
    from automation import subscriptions

    click.echo(f"webhook {subscriptions.mask_secret(webhook.destination, secret)}")
    sort = webhook.sort if webhook.sort is not None else "-"
    author = webhook.created_by or "-"
    click.echo(f"  id: {webhook.id or '-'}  sort: {sort}  created by user: {author}")
    click.echo(f"  created: {_when(webhook.created_at)}  updated: {_when(webhook.updated_at)}")
    click.echo(f"  settings: {_names(webhook.settings)}")
    if event_types is not None:
        plan = subscriptions.plan_sync(webhook.destination, event_types, webhook)
        drift = f"add {_names(plan.added)}; remove {_names(plan.removed)}"
        click.echo(f"  rules: {'in sync' if plan.action == 'none' else drift}")
    if not webhook.disabled:
        click.echo("  state: active")
        return
    for line in _DISABLED_HELP:
        click.echo(f"  {line}")


_DISABLED_HELP = (
    "state: DISABLED by amoCRM: it sends nothing to this URL",
    "amoCRM turns a webhook off after more than 100 bad answers in 2 hours (an answer",
    "that is not 2xx within 2 s). Fix the cause first (/healthz, the server log), then",
    "an account administrator turns it back on: amoCRM > Settings > Integrations >",
    "Web hooks > this URL > Enable (Включить) > Save. `webhooks sync` is not the way to.",
)


def _rules_event_types(settings: Settings) -> set[str] | None:
    """The rules' event types, or None when the file cannot be read (status still shows)."""
    from automation.rules import load_rules_file

    try:
        return load_rules_file(settings.rules_file).event_types()
    except AutomationError:
        return None


def _last_webhook_text(sessions: sessionmaker[Session]) -> str:
    """When the newest stored delivery arrived, and how long ago: a silent webhook shows."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from automation.models import Delivery

    with sessions() as session:
        last = session.execute(select(func.max(Delivery.received_at))).scalar()
    if last is None:
        return "none yet"
    return f"{_when(last)} ({_age(datetime.now(UTC) - last)} ago)"


def _when(moment: datetime | None) -> str:
    from datetime import UTC

    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if moment else "-"


def _age(delta: timedelta) -> str:
    """The largest whole unit: `3d`, `5h`, `12m`, `40s`."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@main.command("prune")
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

    from automation import retention

    settings = _settings()
    age = _retention_age(older_than, settings)
    cooldown = retention.longest_cooldown(_load_rules(Path(settings.rules_file)))
    cutoffs = retention.Cutoffs.at(datetime.now(UTC), age, cooldown)
    click.echo(f"pruning {retention.describe_cutoffs(cutoffs)}")
    pruned = retention.prune(_database(), cutoffs, batch_size)
    click.echo(f"pruned {pruned}")


def _retention_age(older_than: str | None, settings: Settings) -> timedelta:
    from datetime import timedelta

    from automation.retention import parse_age

    if older_than is None:
        if settings.retention_days is None:
            raise click.UsageError("give --older-than (e.g. 30d) or set RETENTION_DAYS")
        return timedelta(days=settings.retention_days)
    try:
        return parse_age(older_than)
    except AutomationError as exc:
        raise click.BadParameter(str(exc), param_hint="'--older-than'") from exc
