"""`automation webhooks …`: amoCRM's webhook subscription for this server.

It calls amoCRM's /api/v4/webhooks with the dispatcher's token (it must be an account
admin's), and reads the rules to know which events they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from automation.cli.common import command_rules, command_sessions, command_settings
from automation.config import Settings
from automation.errors import AutomationError
from automation.times import format_age, format_when

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.orm import Session, sessionmaker

    from automation.amocrm.client import AmoCRMClient
    from automation.amocrm.subscriptions import SyncPlan, Webhook, WebhookUrl


def _webhooks_client(settings: Settings, sessions: sessionmaker[Session]) -> AmoCRMClient:
    """A client with the dispatcher's token (refreshed through the database with OAuth)."""
    from automation.amocrm.client import AmoCRMClient
    from automation.dispatch.tokens import TokenStore

    if settings.amocrm_url is None:
        raise click.ClickException(
            "managing webhooks needs AMOCRM_SUBDOMAIN or AMOCRM_BASE_URL, and an admin's token"
        )
    tokens = TokenStore(settings, sessions)
    return AmoCRMClient.for_settings(settings, tokens.access_token)


def _secret(settings: Settings) -> str | None:
    return settings.webhook_secret.get_secret_value() if settings.webhook_secret else None


def _names(settings: Sequence[str]) -> str:
    return ", ".join(settings) or "none"


@click.group("webhooks")
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
    from automation.amocrm import subscriptions

    settings = command_settings()
    target = subscriptions.webhook_url(url, _secret(settings))
    ruleset = command_rules(Path(settings.rules_file))
    if dry_run and (settings.amocrm_url is None or not settings.has_credentials):
        _echo_offline_plan(subscriptions.plan_sync(target.url, ruleset.event_types(), None), target)
        return
    with _webhooks_client(settings, command_sessions()) as client:
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


def _echo_offline_plan(plan: SyncPlan, target: WebhookUrl) -> None:
    """A dry run with no way to ask amoCRM: what the rules need is still worth knowing
    before the token exists (it is the set-up order the docs give)."""
    built = " (built from the base URL and WEBHOOK_SECRET)" if target.built else ""
    click.echo(f"webhook URL: {target.shown}{built}")
    click.echo(f"rules need: {_names(plan.wanted)}")
    click.echo(
        "subscribed now: unknown (asking amoCRM needs AMOCRM_SUBDOMAIN or AMOCRM_BASE_URL "
        "and an admin's token: AMOCRM_ACCESS_TOKEN or `automation auth exchange`)"
    )
    for event_type in plan.unmapped:
        click.echo(
            f"warning: amoCRM has no webhook for {event_type}; rules on it never fire",
            err=True,
        )
    click.echo("dry run: nothing changed")


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
    from automation.amocrm import subscriptions

    settings = command_settings()
    secret = _secret(settings)
    if url is None and secret is None:
        raise click.UsageError("give the webhook URL, or set WEBHOOK_SECRET to find it")
    target = subscriptions.webhook_url(url, secret).url if url is not None else None
    sessions = command_sessions(read_only=True)
    with _webhooks_client(settings, sessions) as client:
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
    from automation.amocrm import subscriptions

    click.echo(f"webhook {subscriptions.mask_secret(webhook.destination, secret)}")
    sort = webhook.sort if webhook.sort is not None else "-"
    author = webhook.created_by or "-"
    click.echo(f"  id: {webhook.id or '-'}  sort: {sort}  created by user: {author}")
    click.echo(
        f"  created: {format_when(webhook.created_at)}  updated: {format_when(webhook.updated_at)}"
    )
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
    from automation.rules.load import load_rules_file

    try:
        return load_rules_file(settings.rules_file).event_types()
    except AutomationError:
        return None


def _last_webhook_text(sessions: sessionmaker[Session]) -> str:
    """When the newest stored delivery arrived, and how long ago: a silent webhook shows."""
    from datetime import UTC, datetime

    from automation.store.vitals import last_webhook_at

    with sessions() as session:
        last = last_webhook_at(session)
    if last is None:
        return "none yet"
    return f"{format_when(last)} ({format_age(datetime.now(UTC) - last)} ago)"
