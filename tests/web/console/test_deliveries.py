"""`/ui/deliveries` and `/ui/deliveries/<id>`: the list is `deliveries list`'s and the
API's, one delivery is the explanation `deliveries show` prints, rendered."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from automation.events.payloads import decode_body
from automation.store import intake
from automation.store.explain import describe_explanation
from automation.store.models import Delivery, RulesVersion
from automation.web.console import deliveries as page_module
from tests.store.test_explain import (
    FORM,
    MONDAY,
    RULES,
    SATURDAY,
    deliver,
    explain,
    lead_body,
    talk_body,
)
from tests.web.console.conftest import ADMIN, VIEWER, csrf_token, log_in

LISTED = re.compile(r'<a href="/ui/deliveries/(\d+)">#')
#: The explanation's rules without one bot per chat, so a second chat's greeting
#: meets the cooldown, not the guard.
NO_GUARD = RULES.replace("rules:\n", "defaults: {one_bot_per_chat: 0s}\nrules:\n", 1)


def text(client: FlaskClient, path: str, status: int = 200) -> str:
    answer = client.get(path)
    assert answer.status_code == status, answer.get_data(as_text=True)[:800]
    return answer.get_data(as_text=True)


def listed(client: FlaskClient, path: str) -> list[int]:
    return [int(found) for found in LISTED.findall(text(client, path))]


def launch_link(launch_id: int | None) -> str:
    return f'<a href="/ui/launches/{launch_id}">launch #{launch_id}</a>'


def verdict_item(page: str, rule: str) -> str:
    """The list item of one rule's verdict on a delivery's page (one event)."""
    start = page.index(f"<strong>{rule}</strong> <span")
    return page[start : page.index("</li>", start)]


# --------------------------------------------------------------------------- the list


def test_the_list_finds_a_webhook_by_an_entity_it_named_even_without_a_launch(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    nothing = deliver(sessions, lead_body(59936201), MONDAY)  # matched no rule
    other = deliver(sessions, lead_body(142, lead=5), MONDAY + timedelta(minutes=1))
    chat = deliver(sessions, talk_body(1), MONDAY + timedelta(minutes=2))

    assert listed(admin, "/ui/deliveries") == [chat, other, nothing]
    assert listed(admin, "/ui/deliveries?entity_id=27754599") == [nothing]
    assert listed(admin, "/ui/deliveries?entity_id=93589657") == [chat]  # the chat's contact
    page = text(admin, "/ui/deliveries?entity_id=27754599&status=&since=&until=")
    assert 'href="/ui/deliveries?entity_id=27754599"' in page  # its entities filter the list
    assert 'id="d-entity" name="entity_id" inputmode="numeric" value="27754599"' in page


def test_the_list_filters_by_status_and_time(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    early = deliver(sessions, lead_body(1), MONDAY - timedelta(days=2))
    late = deliver(sessions, lead_body(2), MONDAY)
    with sessions.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == early).values(status="unrecognized"))

    assert listed(admin, "/ui/deliveries?status=unrecognized") == [early]
    assert listed(admin, "/ui/deliveries?status=accepted") == [late]
    assert listed(admin, "/ui/deliveries?since=2024-10-06") == [late]
    assert listed(admin, "/ui/deliveries?until=2024-10-06T00:00:00%2B00:00") == [early]
    assert listed(admin, "/ui/deliveries?since=2024-10-06&until=2024-10-07") == []


def test_the_list_pages_by_keyset_newest_first_keeping_the_filter(
    admin: FlaskClient, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(page_module, "PAGE_SIZE", 2)
    ids = [deliver(sessions, lead_body(n), MONDAY + timedelta(minutes=n)) for n in range(1, 6)]
    deliver(sessions, lead_body(9, lead=5), MONDAY)

    first = text(admin, "/ui/deliveries?entity_id=27754599")
    assert LISTED.findall(first) == [str(ids[4]), str(ids[3])]
    older = re.search(r'<a rel="next" href="([^"]+)">Older', first)
    assert older is not None
    second_url = html.unescape(older.group(1))
    assert "entity_id=27754599" in second_url
    second = text(admin, second_url)
    assert LISTED.findall(second) == [str(ids[2]), str(ids[1])]
    assert 'href="/ui/deliveries?entity_id=27754599">Newest' in second
    third = text(admin, html.unescape(re.findall(r'rel="next" href="([^"]+)"', second)[0]))
    assert LISTED.findall(third) == [str(ids[0])]
    assert 'rel="next"' not in third


def test_the_list_shows_what_the_api_answers_for_the_same_filter(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    for n in range(4):
        deliver(sessions, lead_body(n, lead=27754599 if n % 2 else 7), MONDAY + timedelta(hours=n))
    query = "entity_id=27754599&status=accepted&since=2024-10-07"
    api = admin.get(f"/api/deliveries?{query}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert api.status_code == 200
    assert listed(admin, f"/ui/deliveries?{query}") == [row["id"] for row in api.json["deliveries"]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "status=sent",
            "status: expected one of accepted, unrecognized, queued, rejected, got &#39;sent&#39;",
        ),
        ("entity_id=abc", "entity_id: expected a positive integer"),
        ("since=yesterday", "since: expected a time with its offset"),
        ("cursor=x", "cursor: expected the next_cursor of a previous page"),
        ("lead=1", "lead: unknown parameter"),
        ("limit=5", "limit: the console&#39;s pages have a fixed size"),
    ],
)
def test_a_bad_filter_is_a_400_page_naming_it(admin: FlaskClient, query: str, message: str) -> None:
    assert message in text(admin, f"/ui/deliveries?{query}", status=400)


# ---------------------------------------------------------------------- one delivery


def test_a_delivery_that_matched_nothing_says_why_for_every_rule(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    delivery = deliver(sessions, lead_body(59936201), MONDAY)
    page = text(admin, f"/ui/deliveries/{delivery}")

    assert "<details><summary>Raw body (application/x-www-form-urlencoded" in page
    assert "leads%5Bstatus%5D%5B0%5D%5Bid%5D=27754599" in page
    assert "Event 0: lead.status_changed <small>(leads[status])</small>" in page
    qualified = verdict_item(page, "qualified")
    assert "conditions failed" in qualified
    assert "<td><code>status_id</code></td><td>59936202</td><td>59936201</td>" in qualified
    assert "<td><code>price</code></td><td>&gt; 1000</td><td>0</td>" in qualified
    assert "disabled (enabled: false)" in verdict_item(page, "off")
    assert "Launches it made</h2>\n<ul><li>none</li>" in page


def test_outside_hours_shows_the_local_time_and_the_next_opening(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    delivery = deliver(sessions, lead_body(142), SATURDAY)
    office = verdict_item(text(admin, f"/ui/deliveries/{delivery}"), "office-only")
    assert "outside hours" in office
    assert "it was Sat 2024-10-05 15:00 in Europe/Moscow" in office
    assert "next opens Mon 2024-10-07 09:00 Europe/Moscow" in office


def test_entity_missing_launched_and_stopped_rules_name_what_they_concern(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    delivery = deliver(sessions, talk_body(1, on="contacts"), MONDAY)
    [launch] = explain(sessions, delivery).launches
    page = text(admin, f"/ui/deliveries/{delivery}")

    missing = verdict_item(page, "chat-lead")
    assert "launches on a <strong>lead</strong> and the event names only contact" in missing
    assert f"made {launch_link(launch.id)}" in verdict_item(page, "greeting")
    stopped = verdict_item(page, "after-greeting")
    assert "rule <strong>greeting</strong> matched first and has <code>stop: true</code>" in stopped
    made = page.split("Launches it made", 1)[1]
    assert launch_link(launch.id) in made
    assert 'href="https://mybrand.amocrm.ru/contacts/detail/27754620"' in made


def test_a_busy_chat_links_the_launch_that_held_it(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    delivery = deliver(sessions, talk_body(1), MONDAY)
    found = {v.rule: v for v in explain(sessions, delivery).events[0].rules}
    busy = verdict_item(text(admin, f"/ui/deliveries/{delivery}"), "greeting")
    assert "one bot per chat" in busy
    yielded = launch_link(found["greeting"].launch_id)
    blocker = launch_link(found["chat-lead"].launch_id)
    assert f"{yielded} yielded to {blocker}" in busy


def test_a_cooldown_links_the_earlier_launch(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    first = deliver(sessions, talk_body(1), MONDAY, NO_GUARD)
    second = deliver(sessions, talk_body(2), MONDAY + timedelta(hours=1), NO_GUARD)
    earlier = {v.rule: v for v in explain(sessions, first).events[0].rules}["greeting"]
    skipped = {v.rule: v for v in explain(sessions, second).events[0].rules}["greeting"]

    cooldown = verdict_item(text(admin, f"/ui/deliveries/{second}"), "greeting")
    assert "inside the rule's cooldown" in cooldown
    assert f"{launch_link(skipped.launch_id)} was stored <em>skipped</em>" in cooldown
    assert launch_link(earlier.launch_id) in cooldown


def test_a_duplicate_links_the_launch_that_already_existed(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    first = deliver(sessions, lead_body(142), MONDAY)
    again = deliver(sessions, lead_body(142), MONDAY + timedelta(seconds=5))
    [original] = explain(sessions, first).launches

    page = text(admin, f"/ui/deliveries/{again}")
    assert f"this change already had {launch_link(original.id)}" in verdict_item(
        page, "office-only"
    )


def test_the_rules_version_that_judged_it_is_named(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    delivery = deliver(sessions, lead_body(142), MONDAY)
    used = explain(sessions, delivery).rules
    page = text(admin, f"/ui/deliveries/{delivery}")
    assert f"rules version #{used.version_id}: " in page
    assert f">sha256 {used.content_hash[:12]}</code>, first loaded <time" in page
    assert "from <code>rules.yaml</code>" in page

    with sessions.begin() as session:
        session.execute(delete(RulesVersion))
    pruned = text(admin, f"/ui/deliveries/{delivery}")
    assert f"rules version #{used.version_id} is no longer stored (pruned)" in pruned

    with sessions.begin() as session:
        session.execute(update(Delivery).values(rules_version_id=None))
    old = text(admin, f"/ui/deliveries/{delivery}")
    assert "stored before rules versions were recorded: judged with today&#39;s file" in old
    assert "Judged by" in old


def test_its_entities_link_to_their_card_launches_and_deliveries(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    delivery = deliver(sessions, talk_body(1), MONDAY)
    facts = text(admin, f"/ui/deliveries/{delivery}").split("Judged by", 1)[0]
    assert 'href="https://mybrand.amocrm.ru/leads/detail/27754620"' in facts
    assert 'href="/ui/launches?q=lead:27754620">its launches' in facts
    assert 'href="/ui/deliveries?entity_id=27754620">its deliveries' in facts
    assert 'href="https://mybrand.amocrm.ru/contacts/detail/93589657"' in facts
    assert "chat contact 93589657" in facts
    assert 'href="/ui/launches?q=contact:93589657">its launches' in facts


def test_without_a_subdomain_entities_are_plain_text(
    make_app: Callable[..., Any], make_settings: Callable[..., Any], sessions: Any
) -> None:
    app = make_app(make_settings(admin_token=ADMIN))
    app.config["CONSOLE_FAILED_LOGIN_DELAY"] = 0
    client = app.test_client()
    log_in(client, ADMIN)
    delivery = deliver(sessions, lead_body(1), MONDAY)
    page = text(client, f"/ui/deliveries/{delivery}")
    assert "amocrm.ru" not in page
    assert "lead 27754599 (<a" in page


def test_the_folded_text_is_what_deliveries_show_prints(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    delivery = deliver(sessions, talk_body(1), MONDAY)
    printed = "\n".join(describe_explanation(explain(sessions, delivery)))
    page = text(admin, f"/ui/deliveries/{delivery}")
    assert f"<pre>{escape(printed)}</pre>" in page


def test_a_body_that_no_longer_decodes_says_why(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    payload = decode_body(lead_body(1), FORM, received_at=MONDAY)
    with sessions.begin() as session:
        inbound = intake.Inbound(b"\xff\xfe", FORM, None, MONDAY, payload, None)
        delivery = intake.store(session.connection(), intake.Rows.of(inbound, [])).delivery_id
    page = text(admin, f"/ui/deliveries/{delivery}")
    assert "This body no longer decodes: body is not UTF-8" in page
    assert "Raw body (application/x-www-form-urlencoded, 2 characters)" in page


def test_a_launch_page_links_to_its_delivery_and_back(
    admin: FlaskClient, console_app: Any, webhook_body: Callable[[str], bytes]
) -> None:
    posted = console_app.test_client().post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    delivery = posted.json["delivery_id"]
    launch = text(admin, "/ui/launches").split('href="/ui/launches/', 1)[1].split('"', 1)[0]
    story = text(admin, f"/ui/launches/{launch}")
    linked = re.search(r'webhook <a href="(/ui/deliveries/\d+)">', story)
    assert linked is not None and linked.group(1) == f"/ui/deliveries/{delivery}"
    page = text(admin, linked.group(1))
    assert f"made {launch_link(int(launch))}" in verdict_item(page, "qualified")


def test_unknown_deliveries_are_404_pages(admin: FlaskClient) -> None:
    assert "no delivery with id 2" in text(admin, "/ui/deliveries/2", status=404)
    assert "no delivery with id" in text(admin, "/ui/deliveries/99999999999999999999", status=404)


@pytest.mark.parametrize("token", [ADMIN, VIEWER])
def test_admin_and_viewer_read_both_pages(
    console_app: Any, sessions: sessionmaker[Session], token: str
) -> None:
    delivery = deliver(sessions, lead_body(1), MONDAY)
    client = console_app.test_client()
    log_in(client, token)
    assert listed(client, "/ui/deliveries") == [delivery]
    assert "Why each rule did or did not start a bot" in text(client, f"/ui/deliveries/{delivery}")


@pytest.mark.parametrize("path", ["/ui/deliveries?entity_id=1", "/ui/deliveries/1"])
def test_anonymous_visitors_go_to_the_login_page(anonymous: FlaskClient, path: str) -> None:
    answer = anonymous.get(path)
    assert answer.status_code == 302
    assert answer.location.startswith("/ui/login?next=/ui/deliveries")


def test_the_pages_change_nothing_so_they_take_no_post(admin: FlaskClient) -> None:
    token = csrf_token(admin, "/ui/deliveries")
    for path in ["/ui/deliveries", "/ui/deliveries/1"]:
        assert admin.post(path, data={"csrf_token": token}).status_code == 405


def test_a_large_delivery_shows_a_window_of_events_with_links_to_the_others(
    admin: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    fields = {}
    for i in range(120):
        fields |= {f"leads[status][{i}][id]": 27_000_000 + i, f"leads[status][{i}][status_id]": 1}
    body = urlencode(fields).encode()
    delivery = deliver(sessions, body, MONDAY)

    page = text(admin, f"/ui/deliveries/{delivery}")
    last = text(admin, f"/ui/deliveries/{delivery}?offset=100&limit=50")

    assert page.count('<article class="event"') == 50
    assert "Events 0–49 of 120 shown" in page and "conditions failed 240, disabled 120" in page
    assert f'href="/ui/deliveries/{delivery}?offset=50&amp;limit=50">next</a>' in page
    assert "<div>+100 more</div>" in page  # entities beyond the first 20
    assert last.count('<article class="event"') == 20 and 'id="event-119"' in last
    assert f'href="/ui/deliveries/{delivery}?offset=0&amp;limit=50">first</a>' in last
    text(admin, f"/ui/deliveries/{delivery}?limit=0", status=400)
