"""What the console's reading pages show."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.store import browse, dispatchers
from automation.store.models import ApiCall
from automation.store.states import LaunchStatus
from tests.web.console.conftest import ADMIN, log_in


def text(client: FlaskClient, path: str, status: int = 200) -> str:
    answer = client.get(path)
    assert answer.status_code == status, answer.get_data(as_text=True)[:500]
    return answer.get_data(as_text=True)


def test_the_overview_shows_counts_backlog_dispatchers_calls_and_rules(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    add_launch(LaunchStatus.FAILED)
    add_launch(LaunchStatus.SENT)
    add_launch(LaunchStatus.SENT)
    add_launch(LaunchStatus.PENDING, age=600, not_before=datetime.now(UTC) - timedelta(minutes=9))
    now = datetime.now(UTC)
    with sessions.begin() as session:
        dispatchers.register(session, "d-1", "box", 42, now)
        session.execute(
            insert(ApiCall),
            [
                {
                    "dispatcher": "d-1",
                    "endpoint": "/api/v2/salesbot/run",
                    "launch_count": 2,
                    "started_at": now,
                    "finished_at": now,
                    "status_code": 429,
                    "outcome": "rate_limited",
                }
            ],
        )
    page = text(admin, "/ui/")
    assert 'st-sent">sent</span> 2' in page
    assert 'st-failed">failed</span> 1' in page
    assert "Due now (backlog)</dt><dd>1, oldest due <time" in page
    assert "d-1 (box, pid 42): heartbeat" in page
    assert "rate_limited" in page
    assert '<svg class="sparkline"' in page
    assert "3 rule(s)" in page


def test_the_overview_says_when_no_dispatcher_ever_ran(admin: FlaskClient) -> None:
    assert "none has ever run" in text(admin, "/ui/")


def test_the_live_refresh_gets_only_the_changing_part(admin: FlaskClient) -> None:
    part = admin.get("/ui/", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<html" not in part
    assert "Launches, last 24 h" in part


def test_the_list_filters_by_status_rule_bot_and_entity(
    admin: FlaskClient, add_launch: Callable[..., int]
) -> None:
    failed = add_launch(LaunchStatus.FAILED, rule="welcome", bot_id=7, entity_id=11)
    sent = add_launch(LaunchStatus.SENT, rule="welcome", bot_id=8, entity_id=12)
    other = add_launch(LaunchStatus.FAILED, rule="other", bot_id=7, entity_id=13)
    for query, shown in [
        ("status=failed", {failed, other}),
        ("rule=welcome", {failed, sent}),
        ("bot_id=7&rule=welcome", {failed}),
        ("entity_id=12", {sent}),
        ("q=rule:welcome+status:failed", {failed}),
        ("q=bot:7+lead:13", {other}),
        ("q=12", {sent}),
        ("q=contact:12", set()),
        ("status=&rule=&q=", {failed, sent, other}),
    ]:
        page = text(admin, f"/ui/launches?{query}")
        for launch in (failed, sent, other):
            assert (f">#{launch}</a>" in page) == (launch in shown), (query, launch)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("q=colour:red", "q: expected qualifier:value"),
        ("status=lost", "status: expected one of"),
        ("rule=a&q=rule:b", "rule is given twice"),
        ("bot_id=x", "bot_id: expected a positive integer"),
        ("since=yesterday", "since: expected a time"),
        ("cursor=abc", "cursor: expected the cursor"),
    ],
)
def test_a_bad_filter_is_a_400_that_names_it(admin: FlaskClient, query: str, message: str) -> None:
    assert message in text(admin, f"/ui/launches?{query}", status=400)


def test_tabs_count_each_status_with_the_other_filters_applied(
    admin: FlaskClient, add_launch: Callable[..., int]
) -> None:
    for _ in range(3):
        add_launch(LaunchStatus.FAILED, rule="welcome")
    add_launch(LaunchStatus.FAILED, rule="other")
    page = text(admin, "/ui/launches?rule=welcome&status=sent")
    assert 'status=failed&amp;rule=welcome">failed <span class="n">3</span>' in page
    assert 'rule=welcome" aria-current="page">sent <span class="n">0</span>' in page


def test_counts_stop_at_the_cap(
    admin: FlaskClient, add_launch: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browse, "COUNT_CAP", 2)
    for _ in range(3):
        add_launch(LaunchStatus.FAILED)
    assert 'failed <span class="n">2+</span>' in text(admin, "/ui/launches")


def test_pages_follow_each_other_without_repeats_or_gaps(
    admin: FlaskClient, add_launch: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("automation.web.console.pages.PAGE_SIZE", 2)
    ids = [add_launch(LaunchStatus.SENT, age=100 - i) for i in range(5)]
    seen: list[int] = []
    path = "/ui/launches?status=sent"
    while path:
        page = text(admin, path)
        seen += [int(found) for found in re.findall(r">#([0-9]+)</a>", page)]
        older = re.search(r'rel="next" href="([^"]+)"', page)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert seen == list(reversed(ids))


def test_times_are_relative_with_the_exact_time_in_display_timezone(
    make_app: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    add_launch: Callable[..., int],
) -> None:
    app = make_app(make_settings(admin_token=ADMIN, display_timezone="Asia/Tokyo"))
    client = app.test_client()
    log_in(client, ADMIN)
    add_launch(LaunchStatus.SENT, age=7200)
    page = text(client, "/ui/launches")
    assert "2 h ago</time>" in page
    assert "Asia/Tokyo" in page


def test_entities_link_to_their_amocrm_card_when_the_subdomain_is_known(
    admin: FlaskClient, add_launch: Callable[..., int]
) -> None:
    add_launch(LaunchStatus.SENT, entity_id=555, entity_type=2)
    page = text(admin, "/ui/launches")
    assert 'href="https://mybrand.amocrm.ru/leads/detail/555"' in page


def test_a_launch_page_tells_its_story_and_links_its_delivery(
    admin: FlaskClient, console_app: Any, webhook_body: Callable[[str], bytes]
) -> None:
    console_app.test_client().post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    listing = text(admin, "/ui/launches")
    launch = int(listing.split('href="/ui/launches/', 1)[1].split('"', 1)[0])
    page = text(admin, f"/ui/launches/{launch}")
    assert "rule <strong>qualified</strong> matched lead.status_changed" in page
    assert 'href="/ui/deliveries/1"' in page
    assert "automation launches show" in page
    assert "why: pending: due at" in page  # describe_story's own text, word for word


def test_an_unknown_launch_is_a_404_page(admin: FlaskClient) -> None:
    assert "no launch with id 999" in text(admin, "/ui/launches/999", status=404)
    assert text(admin, "/ui/launches/99999999999999999999", status=404)


def test_the_rules_page_lists_rules_version_and_conflicts(
    admin: FlaskClient, rules_file: Any
) -> None:
    page = text(admin, "/ui/rules")
    assert "qualified" in page
    assert "&#34;status_id&#34;: 59936202" in page
    assert "Last error</dt><dd>none" in page


def test_the_rules_page_shows_the_last_error_with_file_and_line(
    admin: FlaskClient, console_app: Any, rules_file: Any
) -> None:
    rules_file.write_text("version: 1\nrules:\n  - name: x\n    on: nonsense\n")
    console_app.extensions["automation"].rules.reload()
    page = text(admin, "/ui/rules")
    assert "rules.yaml:4" in page
    assert "qualified" in page  # the last good rules stay in use


def test_trying_a_body_shows_each_rules_decision_and_stores_nothing(
    admin: FlaskClient, webhook_body: Callable[[str], bytes], sessions: sessionmaker[Session]
) -> None:
    token = admin.get("/ui/rules").get_data(as_text=True).split('name="csrf_token" value="')[1]
    token = token.split('"', 1)[0]
    body = webhook_body("status_lead").decode()
    answer = admin.post("/ui/rules/try", data={"csrf_token": token, "body": body})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert '<strong>qualified</strong>: <span class="st st-sent">launch</span> bot 101' in page
    assert "no launch" not in page.split("Try a webhook body", 1)[1].split("qualified", 1)[0]
    assert "No launches match." in text(admin, "/ui/launches")
    assert "No deliveries match." in text(admin, "/ui/deliveries")
    bad = admin.post("/ui/rules/try", data={"csrf_token": token, "body": "{oops"})
    assert bad.status_code == 400
    assert "body: body is not valid JSON" in bad.get_data(as_text=True)


def test_deliveries_list_and_show_body_events_and_decisions(
    admin: FlaskClient, console_app: Any, webhook_body: Callable[[str], bytes]
) -> None:
    console_app.test_client().post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    listing = text(admin, "/ui/deliveries")
    assert 'href="/ui/deliveries/1"' in listing
    assert 'href="/ui/deliveries/1"' in text(admin, "/ui/deliveries?entity_id=27754599")
    assert 'href="/ui/deliveries/1"' not in text(admin, "/ui/deliveries?entity_id=1")
    page = text(admin, "/ui/deliveries/1")
    assert "<details><summary>Raw body" in page
    assert "lead.status_changed" in page
    assert "<strong>qualified</strong>" in page
    assert 'href="/ui/launches/' in page
    assert "no delivery with id 2" in text(admin, "/ui/deliveries/2", status=404)


def test_every_page_forbids_framing_and_foreign_scripts(admin: FlaskClient) -> None:
    answer = admin.get("/ui/launches")
    policy = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe" not in policy


def test_htmx_is_served_from_here_with_its_licence(anonymous: FlaskClient) -> None:
    page = anonymous.get("/ui/login").get_data(as_text=True)
    assert 'src="/ui/static/htmx-2.0.11.min.js"' in page
    assert "//" not in page.split('src="', 1)[1].split('"', 1)[0]
    with anonymous.get("/ui/static/htmx-2.0.11.min.js") as script:
        assert script.status_code == 200
    with anonymous.get("/ui/static/htmx-LICENSE.txt") as licence:
        assert "Zero-Clause BSD" in licence.get_data(as_text=True)
