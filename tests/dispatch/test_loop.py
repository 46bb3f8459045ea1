"""The dispatcher against the fake amoCRM over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from automation import metrics
from automation.config import Settings
from automation.dispatch import loop as dispatch
from automation.dispatch.loop import Dispatcher
from automation.errors import NotAlone
from automation.store import budget
from automation.store.models import ApiCall, CallLaunch, Launch, OAuthToken, RateLimit
from automation.store.states import LaunchStatus
from tests.fake_amocrm import (
    ACCESS_TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    REFRESH_TOKEN,
    FakeAmoCRM,
)
from tests.launches import add_launches, launch_values

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def live_settings(make_settings: Callable[..., Settings], fake: FakeAmoCRM) -> Settings:
    return make_settings(
        amocrm_base_url=fake.url, amocrm_access_token=ACCESS_TOKEN, amocrm_max_rps=50
    )


def make(
    settings: Settings, sessions: sessionmaker[Session], read_timeout: float = 2.0
) -> Dispatcher:
    return dispatch.build(settings, sessions, read_timeout=read_timeout)


def statuses(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        counts: dict[str, int] = {}
        for status in session.scalars(select(Launch.status)):
            counts[status.value] = counts.get(status.value, 0) + 1
        return counts


def launches(sessions: sessionmaker[Session]) -> list[Launch]:
    with sessions() as session:
        return list(session.scalars(select(Launch).order_by(Launch.id)))


def make_due(sessions: sessionmaker[Session]) -> None:
    """Pretend the back-off has passed: everything pending is due now."""
    with sessions.begin() as session:
        session.execute(
            update(Launch)
            .where(Launch.status == LaunchStatus.PENDING)
            .values(not_before=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.execute(update(RateLimit).values(hold_until=None))


# ---------------------------------------------------------------------------- batches


def test_a_backlog_of_250_goes_out_as_100_100_50(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 250)

    stats = make(live_settings, sessions).run(once=True)

    assert [len(call.body) for call in fake.salesbot_calls()] == [100, 100, 50]
    assert statuses(sessions) == {"sent": 250}
    assert sorted(fake.launches()) == sorted((7, 1000 + i, 2) for i in range(250))
    assert stats.sent == 250
    with sessions() as session:
        calls = session.scalars(select(ApiCall).order_by(ApiCall.id)).all()
        assert [(c.launch_count, c.status_code, c.outcome) for c in calls] == [
            (100, 202, "accepted"),
            (100, 202, "accepted"),
            (50, 202, "accepted"),
        ]
        assert all(c.finished_at is not None for c in calls)
        first = session.scalars(select(Launch).order_by(Launch.id)).first()
        assert first is not None
        assert (first.call_id, first.attempts, first.reason) == (
            calls[0].id,
            1,
            "accepted by amoCRM",
        )


def test_launches_not_yet_due_wait(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 3, not_before=datetime.now(UTC) + timedelta(hours=1))
    make(live_settings, sessions).run(once=True)
    assert fake.salesbot_calls() == []
    assert statuses(sessions) == {"pending": 3}


def test_one_bad_bot_id_among_100_costs_one_launch(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 99)
    add_launches(sessions, 1, bot_id=666, first_entity=5000)
    fake.reject_bots({666})

    make(live_settings, sessions).run(once=True)

    assert statuses(sessions) == {"sent": 99, "failed": 1}
    [bad] = [launch for launch in launches(sessions) if launch.bot_id == 666]
    assert bad.reason is not None
    assert "bot_id" in bad.reason
    assert len(fake.launches()) == 99
    # amoCRM named the bad index: it failed at once, the other 99 went in a new call.
    with sessions() as session:
        calls = session.scalars(
            select(CallLaunch.call_id).where(CallLaunch.launch_id == bad.id)
        ).all()
    assert len(calls) == 1
    assert [len(call.body) for call in fake.salesbot_calls()] == [100, 99]


def test_success_false_is_bisected_until_the_refused_launch_is_alone(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 4)
    fake.refuse_next(1)

    make(live_settings, sessions).run(once=True)

    # 4 refused → halves of 2 accepted: nothing could be blamed, all went out.
    assert statuses(sessions) == {"sent": 4}
    assert [len(call.body) for call in fake.salesbot_calls()] == [4, 2, 2]


def test_a_dispatcher_stopping_mid_bisect_sends_no_more_halves(
    live_settings: Settings,
    sessions: sessionmaker[Session],
    fake: FakeAmoCRM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM finishes the call in flight. A refused batch of 100 bisected to the end
    is a dozen more calls at the rate limit, longer than `serve` waits before SIGKILL:
    the halves go back to `pending` (their call was answered: nothing reached a bot)."""
    add_launches(sessions, 4)
    fake.refuse_next(1)
    worker = make(live_settings, sessions)
    isolate = worker._isolate

    def stopped_meanwhile(batch: Any, result: Any) -> None:
        worker.stop()  # the SIGTERM arrives while the refusal is being read
        isolate(batch, result)

    monkeypatch.setattr(worker, "_isolate", stopped_meanwhile)
    worker.run(once=True)

    assert [len(call.body) for call in fake.salesbot_calls()] == [4]
    assert statuses(sessions) == {"pending": 4}
    assert {launch.reason for launch in launches(sessions)} == {
        "not sent: the dispatcher stopped; sent again later"
    }
    make(live_settings, sessions).run(once=True)  # the next one bisects them anew
    assert statuses(sessions) == {"sent": 4}


def test_a_single_refused_launch_fails_with_amocrms_answer(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 1)
    fake.refuse_next(1)
    make(live_settings, sessions).run(once=True)
    [launch] = launches(sessions)
    assert launch.status is LaunchStatus.FAILED
    assert launch.reason is not None
    assert '"success": false' in launch.reason or '"success":false' in launch.reason


# ---------------------------------------------------------------------------- retries


def test_server_error_sends_the_batch_back_until_the_shared_hold_ends(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 5)
    fake.fail_next(1, status=500)

    assert make(live_settings, sessions).step() == 0.0

    rows = launches(sessions)
    assert {row.status for row in rows} == {LaunchStatus.PENDING}
    assert all(row.retries == 1 and row.attempts == 1 for row in rows)
    hold = current_hold(sessions)
    assert {row.not_before for row in rows} == {hold.hold_until}  # due together
    assert rows[0].last_error is not None and rows[0].last_error.startswith("server_error")

    make_due(sessions)
    make(live_settings, sessions).run(once=True)
    assert statuses(sessions) == {"sent": 5}


def current_hold(sessions: sessionmaker[Session]) -> RateLimit:
    with sessions() as session:
        state = session.get(RateLimit, "amocrm")
        assert state is not None and state.hold_until is not None
        return state


def end_hold(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.execute(update(RateLimit).values(hold_until=None))


def test_a_run_of_server_errors_holds_everyone_longer_each_time_and_keeps_batches_whole(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM, app: Any
) -> None:
    """Issue 15: 20 s of 500s made one dispatcher call 4.7 times a second, and random
    per-launch back-off split 300 launches into 171 calls."""
    add_launches(sessions, 300)
    fake.fail_next(3, status=500)
    first, second = make(live_settings, sessions), make(live_settings, sessions)
    holds_before = metrics.REGISTRY.get_sample_value(
        "automation_dispatch_holds_total", {"cause": "server_error"}
    )

    for streak in (1, 2, 3):
        assert first.step() == 0.0
        hold = current_hold(sessions)
        with sessions() as session:
            call = session.scalars(select(ApiCall).order_by(ApiCall.id.desc())).first()
        assert call is not None and call.finished_at is not None
        assert (hold.consecutive_failures, hold.hold_until - call.finished_at) == (
            streak,
            timedelta(seconds=2 ** (streak - 1)),
        )
        assert "amoCRM failing" in (hold.hold_reason or "")
        waited = second.step()  # everyone holds: no call goes out
        assert waited is None or waited > 0  # None once every launch waits for the hold
        assert len(fake.salesbot_calls()) == streak
        if streak == 1:
            health = app.test_client().get("/healthz").json
            assert "amoCRM failing" in health["dispatch"]["pause_reason"]
        end_hold(sessions)

    make_due(sessions)
    make(live_settings, sessions).run(once=True)

    assert statuses(sessions) == {"sent": 300}
    calls = fake.salesbot_calls()
    assert [len(call.body) for call in calls] == [100] * 6
    failed = [frozenset(task["entity_id"] for task in call.body) for call in calls[:3]]
    resent = [frozenset(task["entity_id"] for task in call.body) for call in calls[3:]]
    assert sorted(map(min, resent)) == sorted(map(min, failed))
    assert set(resent) == set(failed)  # each batch went out again whole
    with sessions() as session:
        state = session.get(RateLimit, "amocrm")
        assert state is not None and state.consecutive_failures == 0  # reset by success
    holds_after = metrics.REGISTRY.get_sample_value(
        "automation_dispatch_holds_total", {"cause": "server_error"}
    )
    assert (holds_after or 0) - (holds_before or 0) == 3


def test_429s_hold_everyone_and_do_not_use_up_the_retry_budget(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """Issue 15: a launch failed 'after 8 attempts; last: rate_limited' after five 500s
    and three 429s. A 429 is our pacing meeting amoCRM's: not the launch's fault."""
    settings = make_settings(
        amocrm_base_url=fake.url, amocrm_access_token=ACCESS_TOKEN, amocrm_max_attempts=2
    )
    add_launches(sessions, 1)
    fake.fail_next(3, status=429)
    for _ in range(3):
        make(settings, sessions).step()
        [launch] = launches(sessions)
        assert (launch.status, launch.retries) == (LaunchStatus.PENDING, 0)
        assert launch.not_before == current_hold(sessions).hold_until
        make_due(sessions)

    make(settings, sessions).run(once=True)

    assert statuses(sessions) == {"sent": 1}
    assert [call.status for call in fake.salesbot_calls()] == [429, 429, 429, 202]


def test_retry_budget_exhausted_fails_the_launch(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(
        amocrm_base_url=fake.url, amocrm_access_token=ACCESS_TOKEN, amocrm_max_attempts=2
    )
    add_launches(sessions, 1)
    fake.fail_next(5, status=503)
    make(settings, sessions).step()
    make_due(sessions)
    make(settings, sessions).step()

    [launch] = launches(sessions)
    assert launch.status is LaunchStatus.FAILED
    assert launch.reason is not None
    assert launch.reason.startswith("failed after 2 attempts; last: server_error")


def test_connection_refused_is_retried_not_failed(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session]
) -> None:
    settings = make_settings(amocrm_base_url="http://127.0.0.1:9", amocrm_access_token="t")
    add_launches(sessions, 2)
    make(settings, sessions).step()
    rows = launches(sessions)
    assert [row.status for row in rows] == [LaunchStatus.PENDING] * 2
    assert rows[0].last_error is not None and rows[0].last_error.startswith("not_sent")


@pytest.mark.parametrize("status", [302, 404, 405])
def test_an_answer_from_something_else_than_the_salesbot_endpoint_is_retried(
    status: int, live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """A redirect (never followed) or a 404/405 means no bot ran: resend later, as after
    a 5xx, so fixing AMOCRM_BASE_URL in time loses nothing."""
    add_launches(sessions, 2)
    fake.fail_next(1, status=status)
    make(live_settings, sessions).step()

    rows = launches(sessions)
    assert [(row.status, row.retries) for row in rows] == [(LaunchStatus.PENDING, 1)] * 2
    assert rows[0].last_error is not None and rows[0].last_error.startswith("other")
    assert fake.launches() == []

    make_due(sessions)
    make(live_settings, sessions).run(once=True)
    assert statuses(sessions) == {"sent": 2}


@pytest.mark.parametrize(
    ("streak", "seconds"),
    [(1, 1), (2, 2), (3, 4), (6, 32), (9, 256), (10, 300), (1000, 300)],
)
def test_the_shared_hold_after_failures_doubles_up_to_five_minutes(
    streak: int, seconds: float
) -> None:
    assert budget.failure_hold(streak) == timedelta(seconds=seconds)


# ------------------------------------------------------------- rate limit, 429, 403


def test_rate_limit_holds_under_max_rps_with_no_429(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(
        amocrm_base_url=fake.url, amocrm_access_token=ACCESS_TOKEN, amocrm_max_rps=7
    )
    fake.limit_rps(7)
    add_launches(sessions, 1500)

    make(settings, sessions).run(once=True)

    assert statuses(sessions) == {"sent": 1500}
    assert [c.status for c in fake.salesbot_calls()].count(429) == 0
    assert fake.max_requests_in_any_window(1.0) <= 7


def test_429_puts_every_dispatcher_on_hold_and_the_batch_back(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 3)
    fake.fail_next(1, status=429)

    assert make(live_settings, sessions).step() == 0.0

    assert statuses(sessions) == {"pending": 3}
    with sessions() as session:
        state = session.get(RateLimit, "amocrm")
        assert state is not None and state.hold_until is not None
        assert state.consecutive_429 == 1
        assert "429" in (state.hold_reason or "")
    # Due again, but the shared hold keeps a second dispatcher quiet too.
    with sessions.begin() as session:
        session.execute(update(Launch).values(not_before=datetime.now(UTC) - timedelta(seconds=1)))
    wait = make(live_settings, sessions).step()
    assert wait is not None and 0 < wait <= 1.0
    assert len(fake.salesbot_calls()) == 1


def test_a_429_with_retry_after_holds_every_dispatcher_that_long(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 3)
    fake.fail_next(1, status=429, retry_after="30")
    before = datetime.now(UTC)

    make(live_settings, sessions).step()

    with sessions() as session:
        state = session.get(RateLimit, "amocrm")
        assert state is not None and state.hold_until is not None
        assert before + timedelta(seconds=30) <= state.hold_until
        assert state.hold_until <= datetime.now(UTC) + timedelta(seconds=30)
    assert statuses(sessions) == {"pending": 3}


def test_a_2xx_we_cannot_read_leaves_the_batch_uncertain_and_unsent_again(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 3)
    fake.accept_unreadable_next(1)

    make(live_settings, sessions).run(once=True)

    assert statuses(sessions) == {"uncertain": 3}
    assert len(fake.salesbot_calls()) == 1
    with sessions() as session:
        reasons = set(session.scalars(select(Launch.reason)))
    assert reasons == {
        "uncertain: HTTP 202 from amoCRM (2xx answer whose body is not a JSON object)"
    }


def test_403_pauses_all_sending_and_keeps_the_launches(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM, app: Any
) -> None:
    add_launches(sessions, 150)
    fake.fail_next(1, status=403)

    make(live_settings, sessions).run(once=True)

    assert statuses(sessions) == {"pending": 150}
    assert len(fake.salesbot_calls()) == 1  # no hammering of a blocked account
    health = app.test_client().get("/healthz").json
    assert health["dispatch"]["paused_until"] is not None
    assert "403" in health["dispatch"]["pause_reason"]
    assert health["status"] == "degraded"


# -------------------------------------------------------------- ambiguous outcomes


def test_read_timeout_makes_the_batch_uncertain_and_it_is_not_resent(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 3)
    fake.stall_next(1, seconds=3)

    make(live_settings, sessions, read_timeout=1.0).run(once=True)
    make(live_settings, sessions, read_timeout=1.0).run(once=True)

    assert statuses(sessions) == {"uncertain": 3}
    assert len(fake.salesbot_calls()) == 1
    [row, *_] = launches(sessions)
    assert row.reason is not None and row.reason.startswith("uncertain: no answer from amoCRM")


def test_amocrm_timeout_bounds_how_long_a_call_waits_for_its_answer(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(
        amocrm_base_url=fake.url, amocrm_access_token=ACCESS_TOKEN, amocrm_timeout=(1.0, 1.0)
    )
    add_launches(sessions, 2)
    fake.stall_next(1, seconds=3)

    dispatch.build(settings, sessions).run(once=True)

    assert statuses(sessions) == {"uncertain": 2}
    [row, *_] = launches(sessions)
    assert row.reason is not None and row.reason.startswith("uncertain: no answer from amoCRM")


def test_retry_uncertain_setting_resends_them(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(
        amocrm_base_url=fake.url, amocrm_access_token=ACCESS_TOKEN, amocrm_retry_uncertain=True
    )
    add_launches(sessions, 2)
    fake.stall_next(1, seconds=3)
    make(settings, sessions, read_timeout=1.0).step()
    assert statuses(sessions) == {"pending": 2}  # not uncertain; due again after a hold
    make_due(sessions)
    make(settings, sessions, read_timeout=1.0).run(once=True)
    assert statuses(sessions) == {"sent": 2}


# ------------------------------------------------------------------------- tokens


def test_expired_oauth_token_is_refreshed_mid_run_and_the_batch_resent(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(
        amocrm_base_url=fake.url,
        amocrm_access_token=ACCESS_TOKEN,
        amocrm_refresh_token=REFRESH_TOKEN,
        amocrm_client_id=CLIENT_ID,
        amocrm_client_secret=CLIENT_SECRET,
        amocrm_redirect_uri=REDIRECT_URI,
    )
    add_launches(sessions, 120)
    worker = make(settings, sessions)
    worker.step()  # 100 sent with the first token
    fake.expire_token()

    worker.run(once=True)

    assert statuses(sessions) == {"sent": 120}
    assert [c.status for c in fake.salesbot_calls()] == [202, 401, 202]
    with sessions() as session:
        stored = session.get(OAuthToken, 1)
        assert stored is not None
        assert stored.access_token == fake.access_token != ACCESS_TOKEN
        assert stored.refresh_token == fake.refresh_token != REFRESH_TOKEN


def test_401_with_a_long_lived_token_pauses_instead_of_hammering(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 3)
    fake.expire_token()
    make(live_settings, sessions).run(once=True)
    assert statuses(sessions) == {"pending": 3}
    assert len(fake.salesbot_calls()) == 1
    with sessions() as session:
        state = session.get(RateLimit, "amocrm")
        assert state is not None and "401" in (state.hold_reason or "")


# ------------------------------------------------------------------- dry run, SQLite


def test_dry_run_records_everything_and_sends_nothing(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(amocrm_base_url=fake.url)  # no token: dry run by default
    assert settings.is_dry_run
    add_launches(sessions, 130)
    stats = make(settings, sessions).run(once=True)
    assert statuses(sessions) == {"dry_run": 130}
    assert fake.calls == []
    assert stats.dry_run == 130
    with sessions() as session:
        outcomes = session.scalars(select(ApiCall.outcome)).all()
    assert outcomes == ["dry_run", "dry_run"]


def test_a_second_dispatcher_on_sqlite_says_so(
    live_settings: Settings, sessions: sessionmaker[Session], database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("on PostgreSQL several dispatchers run together")
    first = make(live_settings, sessions)
    first._register(wait=False)
    second = make(live_settings, sessions)
    with pytest.raises(NotAlone, match=r"another dispatcher .* runs on this SQLite database"):
        second.run(once=True, wait_if_not_alone=False)
    first._unregister()
    make(live_settings, sessions).run(once=True)  # the first one stopped: fine now


def test_claims_of_a_dead_dispatcher_are_recovered(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    add_launches(sessions, 4)
    now = datetime.now(UTC)
    from automation.store import outbox

    with sessions.begin() as session:
        claimed = outbox.claim_due(session, "dead:1", now, limit=2)
        assert claimed is not None
        outbox.start_call(session, claimed.part(claimed.launches[:1]), "/api/v2/salesbot/run", now)
    # "dead:1" never registered a heartbeat: it is gone.
    make(live_settings, sessions).run(once=True)

    rows = launches(sessions)
    assert [row.status for row in rows] == [
        LaunchStatus.UNCERTAIN,  # its call had started: it may have reached amoCRM
        LaunchStatus.SENT,  # claimed but never in a call: safe to send
        LaunchStatus.SENT,
        LaunchStatus.SENT,
    ]
    assert len(fake.launches()) == 3


def test_launches_of_an_answered_call_left_sending_go_back_to_pending(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """A dispatcher that died while bisecting a rejected batch: its call was answered
    (400), so nothing was launched and the launches can safely be sent again."""
    from automation.store import outbox

    add_launches(sessions, 2)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        claimed = outbox.claim_due(session, "dead:2", now, limit=2)
        assert claimed is not None
        call_id = outbox.start_call(session, claimed, "/api/v2/salesbot/run", now)
        outbox.finish_call(session, call_id, now, outcome="bad_request", status_code=400)

    make(live_settings, sessions).run(once=True)

    assert statuses(sessions) == {"sent": 2}


# ---------------------------------------------------------------- one bot per chat


def add_chat_launch(sessions: sessionmaker[Session], **values: Any) -> int:
    """A pending launch due a second ago, with the chat columns the guard stores."""
    due = datetime.now(UTC) - timedelta(seconds=1)
    with sessions.begin() as session:
        return int(
            session.execute(
                insert(Launch).values(launch_values(due, **values)).returning(Launch.id)
            ).scalar_one()
        )


def test_one_request_never_starts_two_bots_in_one_chat(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """Stored with the guard off (`one_bot_per_chat: 0s`): a bot on the lead and one on
    the contact of the same chat, and one elsewhere."""
    add_chat_launch(sessions, bot_id=1, entity_id=5, chat_lead_id=5)
    add_chat_launch(
        sessions, bot_id=2, entity_type=1, entity_id=9, chat_lead_id=5, chat_contact_id=9
    )
    add_chat_launch(sessions, bot_id=3, entity_id=6, chat_lead_id=6)

    make(live_settings, sessions).run(once=True)

    assert [[task["bot_id"] for task in call.body] for call in fake.salesbot_calls()] == [
        [1, 3],
        [2],
    ]
    assert statuses(sessions) == {"sent": 3}


def test_a_launch_waiting_for_a_rejected_one_is_sent_in_the_same_run(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    fake.reject_bots({1})
    blocker = add_chat_launch(sessions, bot_id=1, entity_id=5, chat_lead_id=5)
    later = datetime.now(UTC) + timedelta(minutes=10)
    add_chat_launch(
        sessions,
        bot_id=2,
        entity_type=1,
        entity_id=9,
        chat_lead_id=5,
        chat_contact_id=9,
        blocked_by=blocker,
        not_before=later,
        reason="busy: waits for launch #1",
    )

    make(live_settings, sessions).run(once=True)

    assert statuses(sessions) == {"failed": 1, "sent": 1}
    assert fake.launches() == [(2, 9, 1)]
