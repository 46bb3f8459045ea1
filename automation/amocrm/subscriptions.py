"""Which amoCRM webhook settings the rules need, and how to get there from what is set.

amoCRM delivers an event family only to URLs subscribed to its setting (`status_lead`,
`add_talk`, …, protocol §1.2); a rule on an event nobody subscribed to never fires, and
every extra setting is traffic we store and throw away. This module maps event types
to settings, reads amoCRM's webhook model and plans a sync. Pure: no HTTP client, no
database; the `/api/v4/webhooks` calls come in through the `WebhooksApi` protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from automation.errors import WebhookUrlError
from automation.events.payloads import ACTION_VERBS

#: The path our webhook route listens on; the secret is its last segment.
WEBHOOK_PATH_PREFIX = "/webhooks/amocrm/"

_CRM_SETTINGS = ("add", "update", "delete", "restore", "responsible", "note")
#: Payload actions amoCRM offers as webhook settings, per event family (protocol §1.2).
#: The setting's name is `<action>_<family>`. Contacts and companies have no stage,
#: customers cannot be restored, tasks carry no notes: those event types have no
#: setting. Only `status_lead` is listed for stage moves although `update_lead` carries
#: them too: subscribing both would deliver every move twice.
SETTING_ACTIONS: Mapping[str, tuple[str, ...]] = {
    "lead": ("add", "update", "delete", "restore", "status", "responsible", "note"),
    "contact": _CRM_SETTINGS,
    "company": _CRM_SETTINGS,
    "customer": ("add", "update", "delete", "responsible", "note"),
    "task": ("add", "update", "delete", "responsible"),
    "talk": ("add", "update"),
    "message": ("add",),
    "outgoing_message": ("add",),
    "unsorted": ("add", "update", "delete"),
}

_VERB_ACTIONS: Mapping[str, str] = {verb: action for action, verb in ACTION_VERBS.items()}
_SECRET_PATH = re.compile(r"(?P<prefix>.*)/webhooks/amocrm/(?P<secret>[^/]+)/?")


class WebhooksApi(Protocol):
    """What a sync needs from amoCRM's `/api/v4/webhooks` (`AmoCRMClient` provides it)."""

    def list_webhooks(self, destination: str | None = None) -> list[dict[str, Any]]: ...

    def subscribe_webhook(
        self, destination: str, settings: Sequence[str], sort: int | None = None
    ) -> dict[str, Any]: ...

    def unsubscribe_webhook(self, destination: str) -> None: ...


# ------------------------------------------------------------------ event types → settings


def setting_for(event_type: str) -> str | None:
    """amoCRM's webhook setting delivering `event_type` (`lead.status_changed` →
    `status_lead`), or None when amoCRM has no such webhook (`contact.status_changed`)."""
    family, _, verb = event_type.partition(".")
    action = _VERB_ACTIONS.get(verb)
    if action is None or action not in SETTING_ACTIONS.get(family, ()):
        return None
    return f"{action}_{family}"


def settings_for(event_types: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(settings that deliver `event_types`, event types no setting delivers), both sorted.

    The second list is for the operator: a rule on those types can never fire, and
    saying so beats dropping them silently.
    """
    wanted: set[str] = set()
    unmapped: set[str] = set()
    for event_type in event_types:
        setting = setting_for(event_type)
        if setting is None:
            unmapped.add(event_type)
        else:
            wanted.add(setting)
    return tuple(sorted(wanted)), tuple(sorted(unmapped))


# ------------------------------------------------------------------------- the webhook URL


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """The URL to subscribe, and whether we built it from a base URL and the secret."""

    url: str
    secret: str
    built: bool

    @property
    def shown(self) -> str:
        """The URL with its secret masked, for output and logs."""
        return mask_secret(self.url, self.secret)


def webhook_url(given: str, secret: str | None) -> WebhookUrl:
    """Turn what the operator typed into the exact URL to register with amoCRM.

    A bare base URL (`https://host`) gets our route and WEBHOOK_SECRET appended. A full
    URL must end in `/webhooks/amocrm/<secret>` and gets the trailing slash amoCRM
    insists on. A secret other than WEBHOOK_SECRET is refused: the server would answer
    every webhook with 404 and amoCRM would soon disable it.
    """
    parts = urlsplit(given.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlError(f"webhook URL: expected an http:// or https:// URL, got {given!r}")
    if parts.query or parts.fragment:
        raise WebhookUrlError(f"webhook URL: expected no query or fragment, got {given!r}")
    if parts.path in ("", "/"):
        return _built_url(parts.scheme, parts.netloc, secret)
    match = _SECRET_PATH.fullmatch(parts.path)
    if match is None:
        raise WebhookUrlError(
            f"webhook URL: the path must end in {WEBHOOK_PATH_PREFIX}<WEBHOOK_SECRET>/ "
            f"(or give only the base URL, e.g. {parts.scheme}://{parts.netloc}), got {given!r}"
        )
    if secret is not None and match["secret"] != secret:
        raise WebhookUrlError(
            "webhook URL: its secret segment is not WEBHOOK_SECRET; this server would answer "
            "amoCRM with 404 and amoCRM would disable the webhook"
        )
    path = f"{match['prefix']}{WEBHOOK_PATH_PREFIX}{match['secret']}/"
    url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return WebhookUrl(url=url, secret=match["secret"], built=False)


def _built_url(scheme: str, netloc: str, secret: str | None) -> WebhookUrl:
    if not secret:
        raise WebhookUrlError(
            "webhook URL: a base URL needs WEBHOOK_SECRET to build "
            f"{WEBHOOK_PATH_PREFIX}<WEBHOOK_SECRET>/; set it or give the full URL"
        )
    url = f"{scheme}://{netloc}{WEBHOOK_PATH_PREFIX}{secret}/"
    return WebhookUrl(url=url, secret=secret, built=True)


def mask_secret(url: str, secret: str | None) -> str:
    """`url` with the secret path segment shown as `***` (the secret is a password)."""
    match = _SECRET_PATH.fullmatch(urlsplit(url).path)
    if match is None or (secret is not None and match["secret"] != secret):
        return url
    return url.replace(f"{WEBHOOK_PATH_PREFIX}{match['secret']}", f"{WEBHOOK_PATH_PREFIX}***", 1)


def is_ours(destination: str, secret: str) -> bool:
    """Whether amoCRM's `destination` points at our route with our secret."""
    match = _SECRET_PATH.fullmatch(urlsplit(destination).path)
    return match is not None and match["secret"] == secret


# ------------------------------------------------------------------------ amoCRM's model


@dataclass(frozen=True, slots=True)
class Webhook:
    """One webhook of `GET /api/v4/webhooks`, read leniently: amoCRM's ids and
    timestamps arrive as numbers or strings depending on the client that saw them."""

    destination: str
    settings: tuple[str, ...]
    disabled: bool
    id: str | None = None
    sort: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: int | None = None

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Webhook:
        settings = item.get("settings")
        return cls(
            destination=str(item.get("destination") or ""),
            settings=tuple(sorted(str(s) for s in settings)) if isinstance(settings, list) else (),
            disabled=item.get("disabled") in (True, 1, "1", "true"),
            id=str(item["id"]) if item.get("id") is not None else None,
            sort=_int_or_none(item.get("sort")),
            created_at=_unix_time(item.get("created_at")),
            updated_at=_unix_time(item.get("updated_at")),
            created_by=_int_or_none(item.get("created_by")),
        )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _unix_time(value: Any) -> datetime | None:
    """amoCRM's Unix seconds as an aware UTC datetime."""
    seconds = _int_or_none(value)
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def find_webhook(api: WebhooksApi, destination: str) -> Webhook | None:
    """Our subscription, matched exactly: the filter narrows, we still compare, in
    case amoCRM's filter matches loosely."""
    for item in api.list_webhooks(destination):
        webhook = Webhook.from_api(item)
        if webhook.destination == destination:
            return webhook
    return None


def find_ours(api: WebhooksApi, secret: str) -> list[Webhook]:
    """Every webhook of the account that points at our route with our secret."""
    found = (Webhook.from_api(item) for item in api.list_webhooks())
    return [webhook for webhook in found if is_ours(webhook.destination, secret)]


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What `webhooks sync` does to one destination: the settings the rules need
    against those amoCRM has, and the event types no setting can deliver."""

    destination: str
    wanted: tuple[str, ...]
    unmapped: tuple[str, ...]
    current: Webhook | None

    @property
    def added(self) -> tuple[str, ...]:
        have = set(self.current.settings) if self.current else set()
        return tuple(s for s in self.wanted if s not in have)

    @property
    def removed(self) -> tuple[str, ...]:
        have = self.current.settings if self.current else ()
        return tuple(s for s in have if s not in self.wanted)

    @property
    def action(self) -> str:
        """`subscribe`, `update`, `unsubscribe` or `none`."""
        if not self.wanted:
            return "unsubscribe" if self.current else "none"
        if self.current is None:
            return "subscribe"
        return "update" if self.added or self.removed else "none"


def plan_sync(destination: str, event_types: Iterable[str], current: Webhook | None) -> SyncPlan:
    """Pure: the plan that makes `destination`'s settings exactly what the rules need."""
    wanted, unmapped = settings_for(event_types)
    return SyncPlan(destination, wanted, unmapped, current)


def apply_plan(api: WebhooksApi, plan: SyncPlan) -> None:
    """Carry the plan out with at most one call.

    POST replaces the whole settings list of a destination, so one call both adds and
    removes. An empty list is not a subscription: that case is a DELETE. The existing
    `sort` is sent back so a sync does not reorder the account's webhooks.
    """
    if plan.action == "unsubscribe":
        api.unsubscribe_webhook(plan.destination)
    elif plan.action != "none":
        sort = plan.current.sort if plan.current else None
        api.subscribe_webhook(plan.destination, plan.wanted, sort)
