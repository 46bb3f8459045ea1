"""Webhook subscriptions: the event type → setting table, the sync plan, the
`/api/v4/webhooks` client against the fake amoCRM over loopback, and the
`automation webhooks sync|status` commands."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert

from automation.amocrm.client import AmoCRMClient
from automation.amocrm.subscriptions import (
    Webhook,
    WebhookUrlError,
    mask_secret,
    plan_sync,
    setting_for,
    settings_for,
    webhook_url,
)
from automation.cli import main
from automation.errors import WebhooksApiError
from automation.events.payloads import EVENT_TYPES
from automation.store.database import make_engine
from automation.store.models import Delivery
from tests.fake_amocrm import ACCESS_TOKEN, WEBHOOK_SETTINGS, WEBHOOKS_PATH, FakeAmoCRM
from tests.launches import delivery_values

SECRET = "s3cret"
BASE = "https://bots.example.com"
OURS = f"{BASE}/webhooks/amocrm/{SECRET}/"
SHOWN = f"{BASE}/webhooks/amocrm/***/"
#: What `tests/conftest.py`'s TEST_RULES need: lead.status_changed, talk.added, message.added.
NEEDED = ["add_message", "add_talk", "status_lead"]


@pytest.fixture
def client(fake: FakeAmoCRM) -> Iterator[AmoCRMClient]:
    with AmoCRMClient(fake.url, lambda: ACCESS_TOKEN, read_timeout=5) as amocrm:
        yield amocrm


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------- event types → settings


@pytest.mark.parametrize(
    ("event_type", "setting"),
    [
        ("lead.added", "add_lead"),
        ("lead.updated", "update_lead"),
        ("lead.deleted", "delete_lead"),
        ("lead.restored", "restore_lead"),
        # Only status_lead, although update_lead carries stage moves too.
        ("lead.status_changed", "status_lead"),
        ("lead.responsible_changed", "responsible_lead"),
        ("lead.note_added", "note_lead"),
        ("contact.added", "add_contact"),
        ("contact.restored", "restore_contact"),
        ("contact.note_added", "note_contact"),
        ("company.responsible_changed", "responsible_company"),
        ("customer.updated", "update_customer"),
        ("customer.note_added", "note_customer"),
        ("task.added", "add_task"),
        ("task.updated", "update_task"),
        ("task.deleted", "delete_task"),
        ("task.responsible_changed", "responsible_task"),
        ("talk.added", "add_talk"),
        ("talk.updated", "update_talk"),
        ("message.added", "add_message"),
        ("outgoing_message.added", "add_outgoing_message"),
        ("unsorted.added", "add_unsorted"),
        ("unsorted.updated", "update_unsorted"),
        ("unsorted.deleted", "delete_unsorted"),
    ],
)
def test_event_type_maps_to_the_amocrm_setting_that_delivers_it(
    event_type: str, setting: str
) -> None:
    assert setting_for(event_type) == setting


def test_event_types_amocrm_has_no_webhook_for_are_exactly_these() -> None:
    unmapped = [t for t in EVENT_TYPES if setting_for(t) is None]

    assert unmapped == [
        "contact.status_changed",
        "company.status_changed",
        "customer.restored",
        "customer.status_changed",
        "task.restored",
        "task.status_changed",
        "task.note_added",
        "unknown",
    ]


def test_every_setting_a_sync_can_send_is_one_amocrm_accepts() -> None:
    sent = {setting_for(t) for t in EVENT_TYPES} - {None}

    assert sorted(sent - WEBHOOK_SETTINGS) == []


def test_settings_for_dedupes_sorts_and_reports_event_types_without_a_setting() -> None:
    wanted, unmapped = settings_for(
        ["talk.added", "lead.status_changed", "task.note_added", "talk.added"]
    )

    assert (wanted, unmapped) == (("add_talk", "status_lead"), ("task.note_added",))


# ------------------------------------------------------------------------ the URL


def test_a_base_url_is_completed_with_the_route_and_the_secret() -> None:
    url = webhook_url("https://bots.example.com", SECRET)

    assert (url.url, url.built, url.shown) == (OURS, True, SHOWN)


@pytest.mark.parametrize(
    "given",
    [
        f"{BASE}/webhooks/amocrm/{SECRET}",
        f"{BASE}/webhooks/amocrm/{SECRET}/",
        f"  {BASE}/webhooks/amocrm/{SECRET}  ",
    ],
)
def test_a_full_url_gets_exactly_one_trailing_slash(given: str) -> None:
    url = webhook_url(given, SECRET)

    assert (url.url, url.built) == (OURS, False)


def test_a_path_prefix_of_a_reverse_proxy_is_kept() -> None:
    url = webhook_url(f"{BASE}/crm/webhooks/amocrm/{SECRET}", SECRET)

    assert url.url == f"{BASE}/crm/webhooks/amocrm/{SECRET}/"


def test_a_full_url_is_accepted_without_webhook_secret_set() -> None:
    assert webhook_url(f"{BASE}/webhooks/amocrm/other", None).url == (
        f"{BASE}/webhooks/amocrm/other/"
    )


@pytest.mark.parametrize(
    ("given", "secret", "message"),
    [
        (
            f"{BASE}/webhooks/amocrm/wrong/",
            SECRET,
            "webhook URL: its secret segment is not WEBHOOK_SECRET; this server would answer "
            "amoCRM with 404 and amoCRM would disable the webhook",
        ),
        (
            f"{BASE}/hook",
            SECRET,
            "webhook URL: the path must end in /webhooks/amocrm/<WEBHOOK_SECRET>/ (or give "
            f"only the base URL, e.g. {BASE}), got '{BASE}/hook'",
        ),
        (
            BASE,
            None,
            "webhook URL: a base URL needs WEBHOOK_SECRET to build "
            "/webhooks/amocrm/<WEBHOOK_SECRET>/; set it or give the full URL",
        ),
        (
            "bots.example.com",
            SECRET,
            "webhook URL: expected an http:// or https:// URL, got 'bots.example.com'",
        ),
        (
            f"{OURS}?x=1",
            SECRET,
            f"webhook URL: expected no query or fragment, got '{OURS}?x=1'",
        ),
    ],
)
def test_a_url_the_server_would_not_answer_is_refused_with_the_reason(
    given: str, secret: str | None, message: str
) -> None:
    with pytest.raises(WebhookUrlError) as raised:
        webhook_url(given, secret)

    assert str(raised.value) == message


def test_mask_secret_hides_only_our_secret_segment() -> None:
    assert (mask_secret(OURS, SECRET), mask_secret(f"{BASE}/other/", SECRET)) == (
        SHOWN,
        f"{BASE}/other/",
    )


# -------------------------------------------------------------------------- the plan


def webhook(*settings: str, disabled: bool = False) -> Webhook:
    return Webhook(destination=OURS, settings=tuple(settings), disabled=disabled, sort=7)


@pytest.mark.parametrize(
    ("event_types", "current", "action", "added", "removed"),
    [
        (["talk.added"], None, "subscribe", ("add_talk",), ()),
        (["talk.added"], webhook("add_talk"), "none", (), ()),
        (
            ["talk.added", "lead.status_changed"],
            webhook("add_talk", "update_lead"),
            "update",
            ("status_lead",),
            ("update_lead",),
        ),
        ([], webhook("add_talk"), "unsubscribe", (), ("add_talk",)),
        ([], None, "none", (), ()),
        # Nothing amoCRM can deliver is the same as nothing at all.
        (["task.note_added"], webhook("add_talk"), "unsubscribe", (), ("add_talk",)),
    ],
)
def test_plan_adds_what_rules_need_and_removes_the_rest(
    event_types: list[str],
    current: Webhook | None,
    action: str,
    added: tuple[str, ...],
    removed: tuple[str, ...],
) -> None:
    plan = plan_sync(OURS, event_types, current)

    assert (plan.action, plan.added, plan.removed) == (action, added, removed)


def test_webhook_model_reads_numbers_sent_as_strings() -> None:
    item = {
        "id": 42,
        "destination": OURS,
        "created_at": "1727700894",
        "updated_at": 1727700900,
        "created_by": "10004026",
        "sort": "10",
        "disabled": True,
        "settings": ["status_lead", "add_talk"],
    }

    assert Webhook.from_api(item) == Webhook(
        destination=OURS,
        settings=("add_talk", "status_lead"),
        disabled=True,
        id="42",
        sort=10,
        created_at=datetime(2024, 9, 30, 12, 54, 54, tzinfo=UTC),
        updated_at=datetime(2024, 9, 30, 12, 55, tzinfo=UTC),
        created_by=10004026,
    )


# ------------------------------------------------------------- the client, over loopback


def test_list_webhooks_is_empty_when_amocrm_answers_204(client: AmoCRMClient) -> None:
    assert client.list_webhooks(OURS) == []


def test_subscribe_then_list_filters_by_exact_destination(
    client: AmoCRMClient, fake: FakeAmoCRM
) -> None:
    fake.add_webhook(f"{BASE}/other/", ["add_lead"])

    client.subscribe_webhook(OURS, ["status_lead", "add_talk"], sort=3)
    listed = client.list_webhooks(OURS)

    assert [(w["destination"], w["settings"], w["sort"]) for w in listed] == [
        (OURS, ["status_lead", "add_talk"], 3)
    ]
    assert fake.calls[-1].query == (
        "filter%5Bdestination%5D=https%3A%2F%2Fbots.example.com%2Fwebhooks%2Famocrm%2Fs3cret%2F"
    )


def test_post_replaces_the_settings_and_keeps_id_creation_and_disabled_flag(
    client: AmoCRMClient, fake: FakeAmoCRM
) -> None:
    fake.add_webhook(OURS, ["add_lead", "update_lead"], disabled=True)
    before = fake.webhooks()[0]

    client.subscribe_webhook(OURS, ["add_talk"])

    after = fake.webhooks()[0]
    assert (after["settings"], after["id"], after["created_at"], after["disabled"]) == (
        ["add_talk"],
        before["id"],
        before["created_at"],
        True,
    )


def test_unsubscribe_removes_the_destination(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.add_webhook(OURS, ["add_talk"])

    client.unsubscribe_webhook(OURS)

    assert (fake.webhooks(), [c.body for c in fake.calls]) == ([], [{"destination": OURS}])


def test_fake_refuses_a_destination_without_the_trailing_slash(client: AmoCRMClient) -> None:
    with pytest.raises(WebhooksApiError) as raised:
        client.subscribe_webhook(OURS.rstrip("/"), ["add_talk"])

    assert (raised.value.status_code, str(raised.value)) == (
        400,
        "amoCRM refused POST /api/v4/webhooks: HTTP 400: Bad Request: Request validation failed",
    )


def test_401_says_how_to_get_a_token_and_never_quotes_it(fake: FakeAmoCRM) -> None:
    with (
        AmoCRMClient(fake.url, lambda: "stale-token-123") as client,
        pytest.raises(WebhooksApiError) as raised,
    ):
        client.list_webhooks()

    assert str(raised.value) == (
        "amoCRM refused GET /api/v4/webhooks: HTTP 401: Unauthorized: Invalid user name or "
        "password; the access token is expired or revoked: set AMOCRM_ACCESS_TOKEN or run "
        "`automation auth exchange CODE`"
    )


def test_403_says_an_administrators_token_is_needed(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.forbid_webhooks()

    with pytest.raises(WebhooksApiError) as raised:
        client.subscribe_webhook(OURS, ["add_talk"])

    assert str(raised.value) == (
        "amoCRM refused POST /api/v4/webhooks: HTTP 403: Forbidden: Access denied; managing "
        "webhooks needs the token of an account administrator (or the account's API access "
        "is blocked)"
    )


def test_an_error_quoting_our_destination_does_not_show_the_webhook_secret(
    client: AmoCRMClient, fake: FakeAmoCRM
) -> None:
    fake.refuse_webhooks(400, f"destination {OURS} is not reachable")

    with pytest.raises(WebhooksApiError) as raised:
        client.subscribe_webhook(OURS, ["add_talk"])

    assert str(raised.value) == (
        "amoCRM refused POST /api/v4/webhooks: HTTP 400: Bad Request: destination *** is not "
        "reachable"
    )


def test_no_answer_names_the_cause_without_token_or_webhook_secret() -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    with (
        AmoCRMClient(base, lambda: ACCESS_TOKEN) as client,
        pytest.raises(WebhooksApiError) as raised,
    ):
        client.list_webhooks(OURS)

    message = str(raised.value)
    assert message.startswith(f"GET /api/v4/webhooks at {base}: no answer from amoCRM: ")
    assert "Connection refused" in message
    assert ACCESS_TOKEN not in message
    assert SECRET not in message


# ------------------------------------------------------------------------------ the CLI


@pytest.fixture
def env(
    fake: FakeAmoCRM,
    database_url: str,
    rules_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The environment of an operator's shell: no .env file, the fake as amoCRM."""
    monkeypatch.chdir(tmp_path)
    return {
        "DATABASE_URL": database_url,
        "RULES_FILE": str(rules_file),
        "WEBHOOK_SECRET": SECRET,
        "AMOCRM_BASE_URL": fake.url,
        "AMOCRM_ACCESS_TOKEN": ACCESS_TOKEN,
    }


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["webhooks", *args], env=env)


def posts(fake: FakeAmoCRM) -> list[object]:
    return [c.body for c in fake.calls if c.method == "POST" and c.path == WEBHOOKS_PATH]


def test_sync_builds_the_url_from_a_base_url_and_subscribes_what_rules_need(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    result = cli(env, "sync", BASE)

    assert (result.exit_code, result.output) == (
        0,
        f"webhook URL: {SHOWN} (built from the base URL and WEBHOOK_SECRET)\n"
        "rules need: add_message, add_talk, status_lead\n"
        "subscribed now: not at all\n"
        "add: add_message, add_talk, status_lead\n"
        "remove: none\n"
        "subscribed\n",
    )
    assert posts(fake) == [{"destination": OURS, "settings": NEEDED}]


def test_sync_removes_settings_no_rule_needs_and_keeps_the_sort(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    fake.add_webhook(OURS, ["add_talk", "update_lead", "add_lead"], sort=5)

    result = cli(env, "sync", OURS.rstrip("/"))

    assert (result.exit_code, result.output) == (
        0,
        f"webhook URL: {SHOWN}\n"
        "rules need: add_message, add_talk, status_lead\n"
        "subscribed now: add_lead, add_talk, update_lead\n"
        "add: add_message, status_lead\n"
        "remove: add_lead, update_lead\n"
        "settings updated\n",
    )
    assert posts(fake) == [{"destination": OURS, "settings": NEEDED, "sort": 5}]


def test_sync_in_step_with_the_rules_changes_nothing(env: dict[str, str], fake: FakeAmoCRM) -> None:
    fake.add_webhook(OURS, NEEDED)

    result = cli(env, "sync", OURS)

    assert (result.exit_code, result.output.splitlines()[-1], posts(fake)) == (
        0,
        "nothing to change",
        [],
    )


def test_sync_dry_run_prints_the_plan_and_changes_nothing(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    fake.add_webhook(OURS, ["add_lead"])

    result = cli(env, "sync", BASE, "--dry-run")

    assert (result.exit_code, result.output.splitlines()[-3:]) == (
        0,
        [
            "add: add_message, add_talk, status_lead",
            "remove: add_lead",
            "dry run: would update; nothing changed",
        ],
    )
    assert (posts(fake), [w["settings"] for w in fake.webhooks()]) == ([], [["add_lead"]])


def test_sync_unsubscribes_when_no_enabled_rule_needs_a_webhook(
    env: dict[str, str], fake: FakeAmoCRM, rules_file: Path
) -> None:
    rules_file.write_text(
        "version: 1\nrules:\n  - {name: off, on: talk.added, enabled: false,"
        " launch: {bot_id: 1, entity: lead}}\n"
    )
    fake.add_webhook(OURS, ["add_talk"])

    result = cli(env, "sync", BASE)

    assert (result.exit_code, result.output.splitlines()[-1], fake.webhooks()) == (
        0,
        "unsubscribed: no rule needs an amoCRM webhook",
        [],
    )


def test_sync_warns_about_event_types_amocrm_cannot_deliver(
    env: dict[str, str], fake: FakeAmoCRM, rules_file: Path
) -> None:
    rules_file.write_text(
        "version: 1\nrules:\n  - {name: notes, on: [task.note_added, task.added],"
        " launch: {bot_id: 1, entity: lead}}\n"
    )

    result = cli(env, "sync", BASE)

    assert result.exit_code == 0
    assert result.stderr == (
        "warning: amoCRM has no webhook for task.note_added; rules on it never fire\n"
    )
    assert posts(fake) == [{"destination": OURS, "settings": ["add_task"]}]


def test_sync_refuses_a_url_the_server_would_answer_with_404(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    result = cli(env, "sync", f"{BASE}/webhooks/amocrm/guess/")

    assert (result.exit_code, result.output, fake.calls) == (
        1,
        "Error: webhook URL: its secret segment is not WEBHOOK_SECRET; this server would "
        "answer amoCRM with 404 and amoCRM would disable the webhook\n",
        [],
    )


def test_sync_with_a_refused_token_exits_1_without_quoting_it(env: dict[str, str]) -> None:
    result = cli({**env, "AMOCRM_ACCESS_TOKEN": "stale-token-123"}, "sync", BASE)

    assert (result.exit_code, result.output) == (
        1,
        "Error: amoCRM refused GET /api/v4/webhooks: HTTP 401: Unauthorized: Invalid user "
        "name or password; the access token is expired or revoked: set AMOCRM_ACCESS_TOKEN "
        "or run `automation auth exchange CODE`\n",
    )


def test_sync_when_amocrm_is_unreachable_exits_1_without_token_or_secret(
    env: dict[str, str],
) -> None:
    result = cli({**env, "AMOCRM_BASE_URL": f"http://127.0.0.1:{closed_port()}"}, "sync", BASE)

    assert result.exit_code == 1
    assert "no answer from amoCRM" in result.output
    assert ACCESS_TOKEN not in result.output
    assert SECRET not in result.output


def test_sync_dry_run_without_a_token_still_shows_what_the_rules_need(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    result = cli({**env, "AMOCRM_ACCESS_TOKEN": ""}, "sync", BASE, "--dry-run")

    assert (result.exit_code, result.output) == (
        0,
        f"webhook URL: {SHOWN} (built from the base URL and WEBHOOK_SECRET)\n"
        "rules need: add_message, add_talk, status_lead\n"
        "subscribed now: unknown (asking amoCRM needs AMOCRM_SUBDOMAIN or AMOCRM_BASE_URL "
        "and an admin's token: AMOCRM_ACCESS_TOKEN or `automation auth exchange`)\n"
        "dry run: nothing changed\n",
    )
    assert fake.calls == []


def test_sync_without_an_amocrm_address_says_which_variable_is_missing(
    env: dict[str, str],
) -> None:
    result = cli({**env, "AMOCRM_BASE_URL": ""}, "sync", BASE)

    assert (result.exit_code, result.output) == (
        1,
        "Error: managing webhooks needs AMOCRM_SUBDOMAIN or AMOCRM_BASE_URL, and an admin's "
        "token\n",
    )


def store_delivery(database_url: str, received_at: datetime) -> None:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(insert(Delivery), delivery_values(received_at))
    engine.dispose()


def test_status_shows_the_subscription_and_the_last_webhook_stored(
    env: dict[str, str], fake: FakeAmoCRM, database_url: str
) -> None:
    fake.add_webhook(f"{BASE}/someone-else/", ["add_lead"])
    fake.add_webhook(OURS, ["add_talk"], sort=2)
    store_delivery(database_url, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    created = datetime.fromtimestamp(fake.webhooks()[1]["created_at"], UTC)

    result = cli(env, "status")

    stamp = f"{created:%Y-%m-%d %H:%M:%S}Z"
    lines = result.output.splitlines()
    assert (result.exit_code, lines[:6]) == (
        0,
        [
            f"webhook {SHOWN}",
            "  id: 2  sort: 2  created by user: 10004026",
            f"  created: {stamp}  updated: {stamp}",
            "  settings: add_talk",
            "  rules: add add_message, status_lead; remove none",
            "  state: active",
        ],
    )
    assert lines[6].startswith("last webhook stored: 2026-01-02 03:04:05Z (")
    assert len(lines) == 7


def test_status_of_a_disabled_webhook_says_how_to_re_enable_it_and_exits_1(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    fake.add_webhook(OURS, NEEDED)
    fake.disable_webhook(OURS)

    result = cli(env, "status", BASE)

    assert result.exit_code == 1
    assert result.output.splitlines()[4:] == [
        "  rules: in sync",
        "  state: DISABLED by amoCRM: it sends nothing to this URL",
        "  amoCRM turns a webhook off after more than 100 bad answers in 2 hours (an answer",
        "  that is not 2xx within 2 s). Fix the cause first (/healthz, the server log), then",
        "  an account administrator turns it back on: amoCRM > Settings > Integrations >",
        "  Web hooks > this URL > Enable (Включить) > Save. `webhooks sync` is not the way to.",
        "last webhook stored: none yet",
    ]


def test_status_without_a_subscription_exits_1_and_says_how_to_subscribe(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    fake.add_webhook(f"{BASE}/webhooks/amocrm/other-secret/", ["add_lead"])

    result = cli(env, "status")

    assert (result.exit_code, result.output) == (
        1,
        "last webhook stored: none yet\n"
        "no amoCRM webhook points at this server: run `automation webhooks sync URL`\n",
    )


def test_status_with_a_non_admin_token_explains_the_403(
    env: dict[str, str], fake: FakeAmoCRM
) -> None:
    fake.forbid_webhooks()

    result = cli(env, "status")

    assert (result.exit_code, result.output) == (
        1,
        "Error: amoCRM refused GET /api/v4/webhooks: HTTP 403: Forbidden: Access denied; "
        "managing webhooks needs the token of an account administrator (or the account's "
        "API access is blocked)\n",
    )


def test_status_without_url_or_webhook_secret_asks_for_one(env: dict[str, str]) -> None:
    result = cli({**env, "WEBHOOK_SECRET": ""}, "status")

    assert (result.exit_code, result.output.splitlines()[-1]) == (
        2,
        "Error: give the webhook URL, or set WEBHOOK_SECRET to find it",
    )
