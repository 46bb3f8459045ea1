"""Fencing: a dispatcher whose claims were taken over never acts on them again.

The story of issue 17: dispatcher A gets a 400 naming no item and holds the batch as
`sending` while it waits for a request slot to resend the halves. A stalls (SIGSTOP, a
VM pause, a swap storm) for longer than DISPATCHER_DEAD_AFTER; dispatcher B declares it
dead, puts the launches back to `pending` (their call was answered) and sends them.
When A resumes, it must not send them again, nor settle, release or retry what is now
B's. The in-process tests make the stall happen at the exact moment A waits for its
slot; the process tests do it with SIGSTOP.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import make_url, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.dispatch import loop as dispatch
from automation.dispatch.loop import Dispatcher
from automation.store import outbox
from automation.store.database import make_engine
from automation.store.models import ApiCall, DispatcherRow, Launch
from automation.store.states import LaunchStatus
from tests.dispatch.test_processes import AUTOMATION, ROOT, dispatcher_env, status_counts, wait_for
from tests.fake_amocrm import (
    ACCESS_TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    REFRESH_TOKEN,
    FakeAmoCRM,
)
from tests.launches import add_launches

ENDPOINT = "/api/v2/salesbot/run"


class StallWhileWaiting(threading.Event):
    """Stands in for A's stop event: the first time A waits (for a request slot), A
    'stalls' and `meanwhile` runs, as the rest of the world would while A is paused."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        super().__init__()
        self._meanwhile: Callable[[], None] | None = meanwhile

    def wait(self, timeout: float | None = None) -> bool:
        if self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return super().wait(timeout)


def declare_dead(sessions: sessionmaker[Session], dispatcher_id: str) -> None:
    """A's last heartbeat is long past, as after a stall beyond DISPATCHER_DEAD_AFTER."""
    with sessions.begin() as session:
        session.execute(
            update(DispatcherRow)
            .where(DispatcherRow.id == dispatcher_id)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1))
        )


def received(fake: FakeAmoCRM) -> Counter[int]:
    """How many times amoCRM started a bot on each entity."""
    return Counter(entity for _, entity, _ in fake.launches())


def stalled_during_its_next_wait(
    a: Dispatcher, b: Dispatcher, sessions: sessionmaker[Session]
) -> None:
    """While A waits, it is declared dead and B drains everything."""

    def take_over() -> None:
        declare_dead(sessions, a.id)
        b.run(once=True)

    a._stopping = StallWhileWaiting(take_over)


@pytest.fixture
def slow_settings(make_settings: Callable[..., Settings], fake: FakeAmoCRM) -> Settings:
    """One request a second: after any call, the next one waits for its slot."""
    return make_settings(
        amocrm_base_url=fake.url,
        amocrm_access_token=ACCESS_TOKEN,
        amocrm_max_rps=1,
        dispatcher_dead_after=1,
    )


def test_a_dispatcher_stalled_during_a_bisect_does_not_resend_what_another_sent(
    slow_settings: Settings,
    sessions: sessionmaker[Session],
    fake: FakeAmoCRM,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_launches(sessions, 99)
    fake.fail_next(1, status=400)  # a 400 that names no item: A must bisect
    a = dispatch.build(slow_settings, sessions, read_timeout=5)
    b = dispatch.build(slow_settings, sessions, read_timeout=5)
    a._register(wait=False)
    stalled_during_its_next_wait(a, b, sessions)

    with caplog.at_level(logging.INFO, logger="automation.dispatcher"):
        a.step()  # the 400, then the stall while waiting to resend the halves

    counts = received(fake)
    assert len(counts) == 99
    assert max(counts.values()) == 1, f"{sum(counts.values()) - 99} launches sent twice"
    assert status_counts(sessions) == {"sent": 99}
    with sessions() as session:
        callers = session.scalars(select(ApiCall.dispatcher).order_by(ApiCall.id)).all()
    assert len(callers) == 2 and callers[1] == b.id  # A's 400, then B's one call
    assert "taken over" in caplog.text


def test_a_dispatcher_stalled_after_a_401_refresh_does_not_resend_what_another_sent(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(
        amocrm_base_url=fake.url,
        amocrm_access_token=ACCESS_TOKEN,
        amocrm_refresh_token=REFRESH_TOKEN,
        amocrm_client_id=CLIENT_ID,
        amocrm_client_secret=CLIENT_SECRET,
        amocrm_redirect_uri=REDIRECT_URI,
        amocrm_max_rps=1,
        dispatcher_dead_after=1,
    )
    add_launches(sessions, 40)
    fake.expire_token()
    a = dispatch.build(settings, sessions, read_timeout=5)
    b = dispatch.build(settings, sessions, read_timeout=5)
    a._register(wait=False)
    stalled_during_its_next_wait(a, b, sessions)

    a.step()  # 401, refresh, then the stall while waiting to resend

    counts = received(fake)
    assert len(counts) == 40
    assert max(counts.values()) == 1, f"{sum(counts.values()) - 40} launches sent twice"
    assert status_counts(sessions) == {"sent": 40}


def test_a_taken_over_dispatcher_registers_anew_before_its_next_call(
    slow_settings: Settings,
    sessions: sessionmaker[Session],
    fake: FakeAmoCRM,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B stopped A's registry row: A must not carry on as the dead A (on SQLite, that
    made two dispatchers run at once), but come back as a new one, and say so."""
    add_launches(sessions, 99)
    fake.fail_next(1, status=400)
    a = dispatch.build(slow_settings, sessions, read_timeout=5)
    b = dispatch.build(slow_settings, sessions, read_timeout=5)
    a._register(wait=False)
    old_id = a.id
    stalled_during_its_next_wait(a, b, sessions)
    a.step()
    add_launches(sessions, 3, first_entity=9000)

    with caplog.at_level(logging.INFO, logger="automation.dispatcher"):
        a.run(once=True)

    assert a.id != old_id
    assert f"dispatcher started id={a.id}" in caplog.text
    with sessions() as session:
        rows = dict(session.execute(select(DispatcherRow.id, DispatcherRow.stopped_at)).all())
        last_call = session.scalars(select(ApiCall).order_by(ApiCall.id.desc())).first()
    assert rows[old_id] is not None  # stays dead
    assert last_call is not None and last_call.dispatcher == a.id
    assert status_counts(sessions) == {"sent": 102}
    assert max(received(fake).values()) == 1


def test_settling_launches_another_dispatcher_took_over_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    add_launches(sessions, 4)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        old = outbox.claim_due(session, "a", now, limit=4)
        assert old is not None
        call_id = outbox.start_call(session, old, ENDPOINT, now)
        outbox.finish_call(session, call_id, now, outcome="bad_request", status_code=400)
    with sessions.begin() as session:  # "a" is dead: its answered call goes back
        assert outbox.recover_orphans(session, [], now) == (4, 0)
    with sessions.begin() as session:
        new = outbox.claim_due(session, "b", now, limit=4)
        assert new is not None and new.ids == old.ids

    with sessions.begin() as session:
        assert outbox.settle(session, old, LaunchStatus.FAILED, now, "from a") == 0
        assert outbox.release(session, old, now, "from a") == 0
        with pytest.raises(outbox.ClaimLost):
            outbox.start_call(session, old, ENDPOINT, now)
    with sessions.begin() as session:
        assert outbox.settle(session, new, LaunchStatus.SENT, now, "from b") == 4

    with sessions() as session:
        rows = session.execute(select(Launch.status, Launch.reason)).all()
    assert set(rows) == {(LaunchStatus.SENT, "from b")}


def test_a_claim_taken_over_and_claimed_again_by_the_same_dispatcher_is_still_fenced(
    sessions: sessionmaker[Session],
) -> None:
    """The claim token, not only the dispatcher's name: a batch held from before a
    recovery is stale even if the same dispatcher claimed those launches again."""
    add_launches(sessions, 2)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        old = outbox.claim_due(session, "a", now, limit=2)
    with sessions.begin() as session:
        outbox.recover_orphans(session, [], now)
    with sessions.begin() as session:
        new = outbox.claim_due(session, "a", now, limit=2)
    assert old is not None and new is not None and old.token != new.token

    with sessions.begin() as session:
        assert outbox.settle(session, old, LaunchStatus.SENT, now, "stale") == 0
    assert status_counts(sessions) == {"sending": 2}


# ------------------------------------------------------------------- real processes


def wait_until_answered(sessions: sessionmaker[Session], status_code: int) -> None:
    def answered() -> bool:
        with sessions() as session:
            return (
                session.scalar(
                    select(ApiCall.id).where(
                        ApiCall.status_code == status_code, ApiCall.finished_at.is_not(None)
                    )
                )
                is not None
            )

    wait_for(answered)


def holds_a_transaction(database_url: str) -> bool:
    """Whether another connection is inside a transaction (and would block B)."""
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(database_url).database or "", timeout=0.2)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            connection.close()
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            busy = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'"
                )
            )
    finally:
        engine.dispose()
    return bool(busy)


def stop_outside_a_transaction(process: subprocess.Popen[bytes], database_url: str) -> None:
    """SIGSTOP `process` at a moment it holds no lock: a paused PostgreSQL transaction
    (or SQLite write lock) would block every other dispatcher until it resumes."""
    for _ in range(100):
        process.send_signal(signal.SIGSTOP)
        time.sleep(0.05)  # let the server notice where the stopped client stands
        if not holds_a_transaction(database_url):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the dispatcher was inside a transaction at every try")


def test_sigstop_past_dead_after_during_a_bisect_sends_nothing_twice(
    database_url: str,
    rules_file: Path,
    fake: FakeAmoCRM,
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    """Issue 17's reproduction with real processes: A is SIGSTOPped while it waits to
    resend the halves of a 400, B recovers and sends, A is SIGCONTinued."""
    add_launches(sessions, 99)
    fake.fail_next(1, status=400)
    # One request per 2 s: A waits about 2 s for the slot of its first half.
    env = dispatcher_env(
        database_url, rules_file, fake, AMOCRM_MAX_RPS="1", AMOCRM_RATE_MARGIN_MS="1000"
    )
    log_path = tmp_path / "a.log"
    with log_path.open("wb") as log_file:
        a = subprocess.Popen([AUTOMATION, "dispatch"], cwd=ROOT, env=env, stderr=log_file)
    try:
        wait_until_answered(sessions, 400)
        stop_outside_a_transaction(a, database_url)
        assert len(fake.salesbot_calls()) == 1, "A resent before it was stopped"
        time.sleep(1.5)  # DISPATCHER_DEAD_AFTER=1: A now looks dead

        b = subprocess.run([AUTOMATION, "dispatch", "--once"], cwd=ROOT, env=env, timeout=60)
        assert b.returncode == 0
        assert status_counts(sessions) == {"sent": 99}

        a.send_signal(signal.SIGCONT)
        # A wakes up in its wait for a slot: it either resends (the defect) or notices.
        wait_for(lambda: len(fake.launches()) > 99 or "taken over" in log_path.read_text(), 60)
    finally:
        a.send_signal(signal.SIGCONT)
        a.send_signal(signal.SIGTERM)
        a.wait(30)

    counts = received(fake)
    assert len(counts) == 99
    assert max(counts.values()) == 1, f"{sum(counts.values()) - 99} launches sent twice"
    assert status_counts(sessions) == {"sent": 99}


def test_a_crash_before_an_accepted_answer_is_written_leaves_its_call_uncertain(
    slow_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """The loop writes an accepted call's answer with the next call's claim (one commit
    per call). A dispatcher SIGKILLed in between leaves exactly that call unanswered in
    the database: its launches must become `uncertain`, never be sent again.

    `_turn` is one turn of the loop; dropping A after it is what a SIGKILL leaves (the
    database holds all that survives a process, and A wrote nothing more)."""
    add_launches(sessions, 150)
    a = dispatch.build(slow_settings, sessions, read_timeout=5)
    a._register(wait=False)
    assert a._turn() == 0.0  # 100 launches accepted by amoCRM; the answer waits
    assert status_counts(sessions) == {"sending": 100, "pending": 50}
    declare_dead(sessions, a.id)  # A was SIGKILLed: its heartbeat stops

    b = dispatch.build(slow_settings, sessions, read_timeout=5)
    b.run(once=True)

    counts = received(fake)
    assert len(counts) == 150 and max(counts.values()) == 1  # nothing sent twice
    assert status_counts(sessions) == {"uncertain": 100, "sent": 50}
    with sessions() as session:
        reasons = set(session.scalars(select(Launch.reason).where(Launch.status == "uncertain")))
    assert reasons == {"uncertain: the dispatcher stopped while its request was in flight"}

    # Had A only stalled (no crash), its answer, written late, ends the uncertainty:
    # amoCRM accepted those 100, once. Nothing is sent again either way.
    a._write_accepted()
    assert status_counts(sessions) == {"sent": 150}
    with sessions() as session:
        late = session.scalars(select(Launch.reason).where(Launch.reason == outbox.ACCEPTED_LATE))
        assert len(list(late)) == 100
    assert len(fake.salesbot_calls()) == 2


def test_an_answer_late_past_dead_after_is_sent_not_uncertain_nor_resent(
    slow_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """A's request is in flight when A stalls past DISPATCHER_DEAD_AFTER: recovery
    makes its launches `uncertain` (amoCRM may have started the bots). Then A's 202
    arrives: they were started, once; the log says `sent`, not `uncertain`."""
    add_launches(sessions, 5)
    fake.stall_next(1, seconds=3)  # processed at once, answered 3 s later
    a = dispatch.build(slow_settings, sessions, read_timeout=10)
    a._register(wait=False)

    def recovered_meanwhile() -> None:
        while status_counts(sessions).get("sending") != 5 or not fake.salesbot_calls():
            time.sleep(0.01)
        declare_dead(sessions, a.id)
        with sessions.begin() as session:
            assert outbox.recover_orphans(session, ["b"], datetime.now(UTC)) == (0, 5)

    b = threading.Thread(target=recovered_meanwhile)
    b.start()
    a.step()
    b.join()
    a._write_accepted()

    assert status_counts(sessions) == {"sent": 5}
    assert max(received(fake).values()) == 1 and len(fake.salesbot_calls()) == 1
    with sessions() as session:
        assert set(session.scalars(select(Launch.reason))) == {outbox.ACCEPTED_LATE}


def test_the_loop_writes_every_accepted_answer_before_it_stops(
    slow_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """With the answers written one turn late, a drain still ends with all `sent`, every
    call finished, and stats that count each launch once."""
    add_launches(sessions, 250)
    settings = slow_settings.model_copy(update={"amocrm_max_rps": 50})

    stats = dispatch.build(settings, sessions, read_timeout=5).run(once=True)

    assert (stats.calls, stats.sent) == (3, 250)
    assert status_counts(sessions) == {"sent": 250}
    with sessions() as session:
        unfinished = session.scalars(select(ApiCall.id).where(ApiCall.finished_at.is_(None)))
        assert list(unfinished) == []


def test_recovery_waits_for_a_call_being_started_and_makes_it_uncertain(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    """PostgreSQL: A, paused past DISPATCHER_DEAD_AFTER while waiting to resend half a
    batch, resumes and starts its call just as B recovers A's launches. B's recovery
    waits for A's row locks; once A commits, the launches are in a call without an
    answer and must become `uncertain`. (Bare, B's UPDATE re-checked the rows against a
    list of unfinished calls read before A's commit, put them back to `pending` and sent
    them a second time: the chaos run's double send.)"""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite runs one writer at a time: no interleaving to test")
    add_launches(sessions, 2)
    now = datetime.now(UTC)
    with sessions.begin() as session:  # A's claim, from before its pause
        held = outbox.claim_due(session, "a", now, limit=2)
        assert held is not None
    a_session = sessions()
    outbox.start_call(a_session, held, ENDPOINT, now)  # A resumes: not committed yet
    a_pid = a_session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()

    def recover() -> None:  # B: "a" has no registry row, so it counts as dead
        with sessions.begin() as session:
            outbox.recover_orphans(session, ["b"], datetime.now(UTC))

    b = threading.Thread(target=recover)
    b.start()
    engine = make_engine(database_url)
    try:
        wait_for(lambda: _blocked_by(engine, a_pid))
    finally:
        engine.dispose()
    a_session.commit()  # A's call row and its launches' call, committed
    a_session.close()
    b.join(10)

    assert status_counts(sessions) == {"uncertain": 2}


def _blocked_by(engine: object, pid: int) -> bool:
    """Whether some session waits for a lock that backend `pid` holds."""
    assert hasattr(engine, "connect")
    with engine.connect() as connection:
        query = "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
        return bool(connection.execute(text(query), {"pid": pid}).scalar())
