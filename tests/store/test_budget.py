"""The shared request budget: `max_rps` calls per second plus the margin, by our clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from automation.config import load_settings
from automation.errors import ConfigError
from automation.store import budget
from automation.store.models import ApiCall


def add_calls(session: Session, *started: datetime) -> int:
    """Calls started at those times; returns the id of one more, the call asking now."""
    rows = [ApiCall(dispatcher="t", endpoint="/x", launch_count=1, started_at=at) for at in started]
    asking = ApiCall(dispatcher="t", endpoint="/x", launch_count=1, started_at=datetime.now(UTC))
    session.add_all([*rows, asking])
    session.flush()
    return asking.id


@pytest.mark.parametrize(
    ("margin_ms", "goes"),
    # The 7 calls started 1.05 s ago. 1000 ms, not 100: on a loaded machine more than
    # 50 ms can pass between writing the calls and taking the slot.
    [(0, True), (30, True), (1000, False)],
)
def test_the_margin_lengthens_the_window(
    sessions: sessionmaker[Session], margin_ms: int, goes: bool
) -> None:
    with sessions.begin() as session:
        seven_ago = datetime.now(UTC) - timedelta(seconds=1.05)
        call_id = add_calls(session, *[seven_ago] * 7)
        verdict = budget.take(session, 7, call_id, timedelta(milliseconds=margin_ms))
    assert verdict.go is goes
    if not goes:
        assert 0 < verdict.wait <= 0.95 + 0.01


def test_fewer_than_max_rps_calls_in_the_window_go_at_once(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        call_id = add_calls(session, *[datetime.now(UTC)] * 6)
        assert budget.take(session, 7, call_id, timedelta(milliseconds=500)).go


@pytest.mark.parametrize("value", ["-1", "1001", "0.5", "lots"])
def test_a_margin_out_of_range_refuses_to_start(value: str) -> None:
    with pytest.raises(ConfigError, match="AMOCRM_RATE_MARGIN_MS: expected a whole number"):
        load_settings({"AMOCRM_RATE_MARGIN_MS": value})
