"""A request slot is good only right after it was granted.

The shared budget counts a call at the moment its slot was granted (its `started_at`).
A dispatcher paused between taking its slot and sending the request (SIGSTOP, a VM
pause, a swap storm: the chaos run of bench/chaos.py caught one after a 400, 2.9 s
late) would send when the budget already let others go: AMOCRM_MAX_RPS + 1 calls
reached amoCRM within one second. A slot older than AMOCRM_RATE_MARGIN_MS when the
request is about to leave is given up, recorded as a call `not_sent`, and a new one is
taken.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.dispatch import loop as dispatch
from automation.store import outbox
from automation.store.models import ApiCall
from tests.dispatch.test_processes import status_counts
from tests.fake_amocrm import ACCESS_TOKEN, FakeAmoCRM
from tests.launches import add_launches


def test_a_request_that_misses_its_slot_waits_for_a_new_one(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = make_settings(
        amocrm_base_url=fake.url,
        amocrm_access_token=ACCESS_TOKEN,
        amocrm_max_rps=1,
        amocrm_rate_margin_ms=300,  # the window is 1.3 s: loopback jitter stays inside
    )
    add_launches(sessions, 1, first_entity=1000)
    a = dispatch.build(settings, sessions, read_timeout=5)
    b = dispatch.build(settings, sessions, read_timeout=5)
    with sessions() as session:  # A claims, takes its slot and records its call...
        batch = outbox.claim_due(session, a.id, datetime.now(UTC), limit=100)
        assert batch is not None
        call_id, wait = a._open_call(session, batch)
        assert call_id is not None and wait == 0
        session.commit()
    time.sleep(1.5)  # ...and is paused before its request leaves, past the window
    add_launches(sessions, 1, first_entity=2000)
    assert b.step() == 0.0  # B's slot: A's is out of the window, B sends now

    a._send(batch, call_id)  # A resumes

    assert fake.max_requests_in_any_window(1.0) == 1
    assert Counter(entity for _, entity, _ in fake.launches()) == {1000: 1, 2000: 1}
    assert status_counts(sessions) == {"sent": 2}
    with sessions() as session:
        outcomes = session.execute(
            select(ApiCall.dispatcher, ApiCall.outcome).order_by(ApiCall.id)
        ).all()
    assert outcomes == [(a.id, "not_sent"), (b.id, "accepted"), (a.id, "accepted")]
