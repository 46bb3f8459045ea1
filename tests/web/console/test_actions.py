"""Retry and cancel from the console, one launch or a whole filter, and their audit."""

from __future__ import annotations

from collections.abc import Callable

from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from automation.store.models import AuditEntry, AuditLaunch, Launch
from automation.store.states import LaunchStatus
from tests.web.console.conftest import csrf_token


def status_of(sessions: sessionmaker[Session], launch_id: int) -> LaunchStatus:
    with sessions() as session:
        return session.get_one(Launch, launch_id).status


def post(client: FlaskClient, path: str, page: str = "/ui/", **data: str) -> tuple[int, str]:
    answer = client.post(path, data={"csrf_token": csrf_token(client, page), **data})
    return answer.status_code, answer.get_data(as_text=True)


def test_cancelling_a_pending_launch_records_who_did_it(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    launch = add_launch(LaunchStatus.PENDING)
    code, _ = post(admin, f"/ui/launches/{launch}/cancel")
    assert code == 302
    assert status_of(sessions, launch) is LaunchStatus.CANCELLED
    page = admin.get(f"/ui/launches/{launch}").get_data(as_text=True)
    assert f"launch #{launch} cancelled" in page  # the flash message
    assert f"cancel by admin (launch #{launch})" in page  # the audit trail


def test_retrying_a_failed_launch_makes_it_pending_and_due(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    launch = add_launch(LaunchStatus.FAILED)
    assert post(admin, f"/ui/launches/{launch}/retry")[0] == 302
    assert status_of(sessions, launch) is LaunchStatus.PENDING
    with sessions() as session:
        entry = session.execute(select(AuditEntry)).scalar_one()
    assert (entry.actor, entry.action, entry.requested, entry.changed) == ("admin", "retry", 1, 1)


def test_an_action_the_status_does_not_allow_changes_nothing_and_says_why(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    launch = add_launch(LaunchStatus.SENT)
    admin.post(f"/ui/launches/{launch}/retry", data={"csrf_token": csrf_token(admin, "/ui/")})
    page = admin.get(f"/ui/launches/{launch}").get_data(as_text=True)
    assert "refused: it is sent; only failed, uncertain or cancelled" in page
    assert status_of(sessions, launch) is LaunchStatus.SENT
    with sessions() as session:
        assert session.execute(select(func.count()).select_from(AuditEntry)).scalar() == 0


def test_the_buttons_shown_are_the_ones_the_status_allows(
    admin: FlaskClient, add_launch: Callable[..., int]
) -> None:
    pending = admin.get(f"/ui/launches/{add_launch(LaunchStatus.PENDING)}").get_data(as_text=True)
    failed = admin.get(f"/ui/launches/{add_launch(LaunchStatus.FAILED)}").get_data(as_text=True)
    sent = admin.get(f"/ui/launches/{add_launch(LaunchStatus.SENT)}").get_data(as_text=True)
    assert "/cancel" in pending and "/retry" not in pending
    assert "/retry" in failed and "/cancel" not in failed
    assert "/retry" not in sent and "/cancel" not in sent


def test_retrying_an_uncertain_launch_asks_first_and_warns_of_a_double_bot(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    launch = add_launch(LaunchStatus.UNCERTAIN)
    code, page = post(admin, f"/ui/launches/{launch}/retry")
    assert code == 200
    assert "may send the customer the same messages twice" in page
    assert status_of(sessions, launch) is LaunchStatus.UNCERTAIN
    code, _ = post(admin, f"/ui/launches/{launch}/retry", confirm="yes")
    assert code == 302
    assert status_of(sessions, launch) is LaunchStatus.PENDING


def test_an_unknown_action_or_launch_is_a_404(admin: FlaskClient) -> None:
    assert post(admin, "/ui/launches/1/explode")[0] == 404
    code, _ = post(admin, "/ui/launches/77/cancel")
    assert code == 302  # back to the launch page, which says it does not exist
    assert admin.get("/ui/launches/77").status_code == 404


def test_bulk_retry_counts_first_then_retries_every_match_under_one_audit_entry(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    failed = [add_launch(LaunchStatus.FAILED, rule="welcome") for _ in range(3)]
    other_rule = add_launch(LaunchStatus.FAILED, rule="other")
    sent = add_launch(LaunchStatus.SENT, rule="welcome")
    preview = admin.get("/ui/launches/bulk/retry?rule=welcome").get_data(as_text=True)
    assert '<strong class="n-matching">3</strong>' in preview
    assert all(status_of(sessions, i) is LaunchStatus.FAILED for i in failed)
    up_to = preview.split('name="up_to" value="', 1)[1].split('"', 1)[0]
    late = add_launch(LaunchStatus.FAILED, rule="welcome")  # arrives after the preview
    code, _ = post(admin, "/ui/launches/bulk/retry", "/ui/launches", rule="welcome", up_to=up_to)
    assert code == 302
    assert [status_of(sessions, i) for i in failed] == [LaunchStatus.PENDING] * 3
    assert status_of(sessions, other_rule) is LaunchStatus.FAILED
    assert status_of(sessions, sent) is LaunchStatus.SENT
    assert status_of(sessions, late) is LaunchStatus.FAILED
    with sessions() as session:
        entry = session.execute(select(AuditEntry)).scalar_one()
        linked = session.execute(select(AuditLaunch.launch_id)).scalars().all()
    assert (entry.action, entry.requested, entry.changed) == ("retry", 3, 3)
    assert entry.target == "all matching rule=welcome"
    assert sorted(linked) == failed
    page = admin.get(f"/ui/launches/{failed[0]}").get_data(as_text=True)
    assert "retry by admin (all matching rule=welcome, 3 of 3 launches)" in page


def test_bulk_cancel_takes_only_pending_launches_of_the_filter(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    pending = add_launch(LaunchStatus.PENDING, bot_id=5)
    failed = add_launch(LaunchStatus.FAILED, bot_id=5)
    preview = admin.get("/ui/launches/bulk/cancel?q=bot:5").get_data(as_text=True)
    assert '<strong class="n-matching">1</strong>' in preview
    up_to = preview.split('name="up_to" value="', 1)[1].split('"', 1)[0]
    post(admin, "/ui/launches/bulk/cancel", "/ui/launches", q="bot:5", up_to=up_to)
    assert status_of(sessions, pending) is LaunchStatus.CANCELLED
    assert status_of(sessions, failed) is LaunchStatus.FAILED


def test_bulk_retry_of_uncertain_launches_needs_the_confirmation(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    launch = add_launch(LaunchStatus.UNCERTAIN)
    preview = admin.get("/ui/launches/bulk/retry").get_data(as_text=True)
    assert "same messages twice" in preview
    up_to = preview.split('name="up_to" value="', 1)[1].split('"', 1)[0]
    post(admin, "/ui/launches/bulk/retry", "/ui/launches", up_to=up_to)
    assert status_of(sessions, launch) is LaunchStatus.UNCERTAIN
    post(admin, "/ui/launches/bulk/retry", "/ui/launches", up_to=up_to, confirm="yes")
    assert status_of(sessions, launch) is LaunchStatus.PENDING


def test_a_bulk_action_with_a_filter_that_excludes_its_statuses_changes_nothing(
    admin: FlaskClient, add_launch: Callable[..., int], sessions: sessionmaker[Session]
) -> None:
    launch = add_launch(LaunchStatus.FAILED)
    preview = admin.get("/ui/launches/bulk/retry?status=sent").get_data(as_text=True)
    assert '<strong class="n-matching">0</strong>' in preview
    post(admin, "/ui/launches/bulk/retry", "/ui/launches", status="sent", up_to="999")
    assert status_of(sessions, launch) is LaunchStatus.FAILED
