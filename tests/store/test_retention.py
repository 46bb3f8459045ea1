"""Retention on SQLite and PostgreSQL: what `prune` deletes, what it must keep, in
batches; the daily prune of the dispatcher; `automation prune`."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from automation.cli import main
from automation.config import Settings, load_settings
from automation.dispatch import loop as dispatch
from automation.errors import ConfigError
from automation.rules.load import load_rules
from automation.store import retention
from automation.store.models import ApiCall, CallLaunch, Delivery, Launch
from automation.store.retention import (
    Cutoffs,
    DailyPrune,
    Pruned,
    PrunePass,
    longest_cooldown,
    prune,
)
from automation.store.states import LaunchStatus
from tests.launches import delivery_values

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
#: A 30-day retention, no cooldown in the rules.
CUTOFFS = Cutoffs.at(NOW, 30 * DAY, timedelta(0))
SETTLED = ["sent", "failed", "dry_run", "cancelled", "skipped"]
KEPT = ["pending", "sending", "uncertain"]
#: `Rows.launch(delivery=OWN)`: a delivery of its own, as old as the launch.
OWN = -1


@dataclass
class Rows:
    """Writes deliveries, launches and API calls with chosen ages, as the server would."""

    sessions: sessionmaker[Session]

    def delivery(self, age: timedelta) -> int:
        values = delivery_values(
            NOW - age, body=b"leads[status][0][id]=1", event_count=1, launch_count=1
        )
        return self._insert(Delivery, values)

    def launch(
        self,
        status: str,
        age: timedelta,
        *,
        delivery: int | None = OWN,
        touched: timedelta | None = None,
        call: int | None = None,
    ) -> int:
        """A launch `age` old (its own delivery unless given), sent in `call` or a new one."""
        if delivery == OWN:
            delivery = self.delivery(age)
        call = call or self.call(age)
        values = {
            "delivery_id": delivery,
            "rule": "test",
            "event_type": "lead.status_changed",
            "event_group": "leads[status]",
            "event_index": 0,
            "bot_id": 7,
            "entity_type": 2,
            "entity_id": 1000,
            "change_key": "lead:1000",
            "dedupe_key": uuid.uuid4().hex,
            "status": LaunchStatus(status),
            "not_before": NOW - age,
            "attempts": 1,
            "retries": 0,
            "created_at": NOW - age,
            "updated_at": NOW - (touched if touched is not None else age),
            "call_id": call,
        }
        launch_id = self._insert(Launch, values)
        self._insert(CallLaunch, {"call_id": call, "launch_id": launch_id, "position": 0})
        return launch_id

    def call(self, age: timedelta) -> int:
        values = {
            "dispatcher": "test",
            "endpoint": "/api/v2/salesbot/run",
            "launch_count": 1,
            "started_at": NOW - age,
        }
        return self._insert(ApiCall, values)

    def _insert(self, model: type[Any], values: dict[str, Any]) -> int:
        with self.sessions.begin() as session:
            result = session.execute(insert(model).values(**values).returning(*_key(model)))
            return int(result.scalar_one())

    def count(self, model: type[Any]) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)

    def launch_ids(self) -> list[int]:
        with self.sessions() as session:
            return list(session.scalars(select(Launch.id).order_by(Launch.id)))

    def left(self) -> tuple[int, int, int, int]:
        """(launches, call links, API calls, deliveries) still stored."""
        return (
            self.count(Launch),
            self.count(CallLaunch),
            self.count(ApiCall),
            self.count(Delivery),
        )


def _key(model: type[Any]) -> list[Any]:
    return [CallLaunch.call_id] if model is CallLaunch else [model.id]


@pytest.fixture
def rows(sessions: sessionmaker[Session]) -> Rows:
    return Rows(sessions)


# ------------------------------------------------------------------------------- prune


@pytest.mark.parametrize("status", SETTLED)
def test_an_old_settled_launch_goes_with_its_link_call_and_delivery(
    rows: Rows, sessions: sessionmaker[Session], status: str
) -> None:
    rows.launch(status, 40 * DAY)

    pruned = prune(sessions, CUTOFFS)

    assert (pruned, rows.left()) == (Pruned(1, 1, 1, 1), (0, 0, 0, 0))


@pytest.mark.parametrize("status", KEPT)
def test_pending_sending_and_uncertain_launches_and_their_deliveries_survive(
    rows: Rows, sessions: sessionmaker[Session], status: str
) -> None:
    rows.launch(status, 400 * DAY)

    pruned = prune(sessions, CUTOFFS)

    assert (pruned, rows.left()) == (Pruned(), (1, 1, 1, 1))


def test_settled_launches_younger_than_the_cutoff_survive(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    for status in SETTLED:
        rows.launch(status, 29 * DAY)

    assert (prune(sessions, CUTOFFS), rows.left()) == (Pruned(), (5, 5, 5, 5))


def test_a_launch_touched_after_the_cutoff_survives(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    # Created long ago, retried by an operator last week and failed again.
    rows.launch("failed", 90 * DAY, touched=7 * DAY)

    assert (prune(sessions, CUTOFFS), rows.left()) == (Pruned(), (1, 1, 1, 1))


def test_sent_launches_stay_while_the_longest_cooldown_still_counts_them(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    counted = rows.launch("sent", 60 * DAY)
    also_counted = rows.launch("dry_run", 60 * DAY)
    rows.launch("failed", 60 * DAY)
    rows.launch("sent", 100 * DAY)

    pruned = prune(sessions, Cutoffs.at(NOW, 30 * DAY, cooldown=90 * DAY))

    assert (pruned, rows.launch_ids()) == (Pruned(2, 2, 2, 2), [counted, also_counted])


def test_a_delivery_with_a_kept_launch_keeps_all_its_launches(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    delivery = rows.delivery(40 * DAY)
    uncertain = rows.launch("uncertain", 40 * DAY, delivery=delivery)
    sent = rows.launch("sent", 40 * DAY, delivery=delivery)

    pruned = prune(sessions, CUTOFFS)

    assert (pruned, rows.launch_ids(), rows.count(Delivery)) == (Pruned(), [uncertain, sent], 1)


def test_a_call_still_linked_to_a_kept_launch_survives(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    shared = rows.call(40 * DAY)
    rows.launch("sent", 40 * DAY, call=shared)
    kept = rows.launch("uncertain", 40 * DAY, call=shared)

    pruned = prune(sessions, CUTOFFS)

    assert (pruned, rows.launch_ids(), rows.count(ApiCall)) == (Pruned(1, 1, 0, 1), [kept], 1)


def test_old_deliveries_without_launches_go_and_recent_ones_stay(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    rows.delivery(31 * DAY)
    rows.delivery(400 * DAY)
    rows.delivery(29 * DAY)

    assert (prune(sessions, CUTOFFS), rows.count(Delivery)) == (Pruned(deliveries=2), 1)


def test_launches_without_a_delivery_are_pruned_on_their_own(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    rows.launch("sent", 40 * DAY, delivery=None)

    assert (prune(sessions, CUTOFFS), rows.left()) == (Pruned(1, 1, 1, 0), (0, 0, 0, 0))


def test_each_step_deletes_at_most_one_batch_in_one_transaction(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    for _ in range(7):
        rows.launch("sent", 40 * DAY)
    prune_pass = PrunePass(sessions, CUTOFFS, batch_size=3)

    after_each_step = []
    while not prune_pass.step():
        after_each_step.append(rows.count(Launch))

    # Launches 3, 3, 1; API calls 3, 3, 1; deliveries 3, 3, 1; then rules versions (none)
    # end the pass.
    assert after_each_step == [4, 1, 0, 0, 0, 0, 0, 0, 0]
    assert (prune_pass.pruned, rows.left()) == (Pruned(7, 7, 7, 7), (0, 0, 0, 0))


def test_a_launch_locked_by_another_transaction_is_skipped_not_waited_for(
    rows: Rows, sessions: sessionmaker[Session], database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers instead")
    locked = rows.launch("failed", 40 * DAY)
    rows.launch("failed", 40 * DAY)
    with sessions.begin() as holder:
        holder.execute(select(Launch).where(Launch.id == locked).with_for_update())
        started = time.monotonic()

        pruned = prune(sessions, CUTOFFS)

        assert time.monotonic() - started < 5
    assert (pruned.launches, rows.launch_ids()) == (1, [locked])


# --------------------------------------------------------------------------- the parts


def test_every_launch_status_is_either_pruned_or_kept_on_purpose() -> None:
    classified = [*retention.UNCOUNTED, *retention.COUNTED, *retention.KEPT]

    assert sorted(classified) == sorted(LaunchStatus)


def test_longest_cooldown_counts_disabled_rules_too() -> None:
    rules = load_rules(
        "version: 1\nrules:\n"
        "  - {name: a, on: talk.added, cooldown: 2d, launch: {bot_id: 1, entity: lead}}\n"
        "  - {name: b, on: talk.added, cooldown: 7d, enabled: false,"
        " launch: {bot_id: 2, entity: lead}}\n"
        "  - {name: c, on: talk.added, launch: {bot_id: 3, entity: lead}}\n"
    )

    assert longest_cooldown(rules) == 7 * DAY


def test_retention_days_must_be_a_positive_whole_number() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"RETENTION_DAYS": "0"})

    assert str(raised.value) == (
        "invalid settings:\n  RETENTION_DAYS: expected a whole number of days > 0 "
        "(or unset to keep everything), got '0'"
    )


def test_retention_days_unset_or_blank_keeps_everything() -> None:
    assert (
        load_settings({}).retention_days,
        load_settings({"RETENTION_DAYS": ""}).retention_days,
    ) == (
        None,
        None,
    )


# ------------------------------------------------------------------ the daily prune


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_daily_prune_steps_one_batch_per_tick_then_waits_a_day(
    rows: Rows, sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    rows.launch("sent", 40 * DAY)
    clock = Clock()
    daily = DailyPrune(make_settings(retention_days=30), sessions, clock=clock)

    for _ in range(3):  # launches, API calls, deliveries: one batch each
        daily.tick()
    rows.launch("sent", 40 * DAY)
    daily.tick()
    untouched_within_the_day = rows.count(Launch)
    clock.now += 24 * 3600
    for _ in range(3):
        daily.tick()

    assert (untouched_within_the_day, rows.left()) == (1, (0, 0, 0, 0))


def test_daily_prune_logs_what_it_pruned(
    rows: Rows,
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows.launch("failed", 40 * DAY)
    daily = DailyPrune(make_settings(retention_days=30), sessions)

    with caplog.at_level(logging.INFO, logger="automation.retention"):
        for _ in range(4):  # one batch per stage: launches, calls, deliveries, versions
            daily.tick()

    assert [r.getMessage().split(" older_than")[0] for r in caplog.records] == [
        "pruned launches=1 call_links=1 api_calls=1 deliveries=1 rules_versions=0"
    ]


def test_daily_prune_does_nothing_without_retention_days(
    rows: Rows, sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    rows.launch("sent", 400 * DAY)
    daily = DailyPrune(make_settings(), sessions)

    for _ in range(3):
        daily.tick()

    assert rows.left() == (1, 1, 1, 1)


def test_daily_prune_skips_the_day_when_the_rules_cannot_be_read(
    rows: Rows,
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows.launch("sent", 40 * DAY)
    missing = tmp_path / "gone.yaml"
    daily = DailyPrune(make_settings(retention_days=30, rules_file=str(missing)), sessions)

    with caplog.at_level(logging.ERROR, logger="automation.retention"):
        for _ in range(3):
            daily.tick()

    assert rows.left() == (1, 1, 1, 1)
    assert [r.getMessage() for r in caplog.records] == [
        "retention skipped today: cannot read the rules' cooldowns: "
        f"{missing}: 1 error\n{missing}: cannot read: No such file or directory"
    ]


def test_dispatcher_applies_retention_days_while_it_sends(
    rows: Rows, sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    old = rows.launch("sent", 40 * DAY)
    due = rows.launch("pending", timedelta(0))
    worker = dispatch.build(make_settings(dry_run=True, retention_days=30), sessions)
    thread = threading.Thread(target=worker.run, daemon=True)

    thread.start()
    deadline = time.monotonic() + 10
    while old in rows.launch_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    thread.join(timeout=10)

    with sessions() as session:
        status = session.scalar(select(Launch.status).where(Launch.id == due))
    assert (status, rows.launch_ids()) == (LaunchStatus.DRY_RUN, [due])


# -------------------------------------------------------------------------- the CLI


@pytest.fixture
def env(
    database_url: str, rules_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {"DATABASE_URL": database_url, "RULES_FILE": str(rules_file)}


def test_prune_command_prints_the_cutoff_and_what_it_deleted(
    rows: Rows, env: dict[str, str]
) -> None:
    rows.launch("sent", 40 * DAY)
    rows.launch("pending", 40 * DAY)
    rows.delivery(31 * DAY)

    result = CliRunner().invoke(main, ["prune", "--older-than", "30d"], env=env)

    lines = result.output.splitlines()
    assert (result.exit_code, len(lines)) == (0, 2)
    assert lines[0].startswith("pruning settled launches and deliveries before ")
    assert lines[1] == "pruned launches=1 call_links=1 api_calls=1 deliveries=2 rules_versions=0"
    assert rows.left() == (1, 1, 1, 1)


def test_prune_command_keeps_sent_launches_a_cooldown_counts_and_says_so(
    rows: Rows, env: dict[str, str], rules_file: Path
) -> None:
    rules_file.write_text(
        "version: 1\nrules:\n"
        "  - {name: a, on: talk.added, cooldown: 90d, launch: {bot_id: 1, entity: lead}}\n"
    )
    rows.launch("sent", 40 * DAY)

    result = CliRunner().invoke(main, ["prune", "--older-than", "30d"], env=env)

    assert result.exit_code == 0
    assert "; sent and dry_run launches only before " in result.output
    assert result.output.endswith(
        "as a rule's cooldown still counts the later ones\n"
        "pruned launches=0 call_links=0 api_calls=0 deliveries=0 rules_versions=0\n"
    )


def test_prune_command_defaults_to_retention_days(rows: Rows, env: dict[str, str]) -> None:
    rows.launch("failed", 8 * DAY)

    result = CliRunner().invoke(main, ["prune"], env={**env, "RETENTION_DAYS": "7"})

    assert (result.exit_code, result.output.splitlines()[-1]) == (
        0,
        "pruned launches=1 call_links=1 api_calls=1 deliveries=1 rules_versions=0",
    )


def test_prune_command_without_an_age_says_how_to_give_one(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["prune"], env=env)

    assert (result.exit_code, result.output.splitlines()[-1]) == (
        2,
        "Error: give --older-than (e.g. 30d) or set RETENTION_DAYS",
    )


def test_prune_command_refuses_an_age_without_a_unit(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["prune", "--older-than", "30"], env=env)

    assert (result.exit_code, result.output.splitlines()[-1]) == (
        2,
        "Error: Invalid value for '--older-than': expected an age such as '30d' (days) or "
        "'12h' (hours), got '30'",
    )


def test_prune_runs_as_a_real_process(rows: Rows, env: dict[str, str]) -> None:
    import os
    import subprocess
    import sys

    rows.launch("sent", 40 * DAY)
    automation = str(Path(sys.executable).parent / "automation")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_")}
    done = subprocess.run(
        [automation, "prune", "--older-than", "30d"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("pruned launches=1 ")
    assert rows.launch_ids() == []


# ------------------------------------------------------------------- rules versions


def test_rules_versions_nothing_refers_to_are_pruned_but_not_the_file_in_use_or_newest(
    rows: Rows, sessions: sessionmaker[Session]
) -> None:
    from automation.rules.load import load_rules
    from automation.store.models import RulesVersion
    from automation.store.versions import record_version

    engine = sessions.kw["bind"]
    texts = [
        f"version: 1\nrules:\n  - {{name: r{n}, on: talk.added, "
        f"launch: {{bot_id: {n}, entity: lead}}}}\n"
        for n in range(1, 6)
    ]
    old = [record_version(engine, load_rules(text), NOW - 40 * DAY) for text in texts]
    judged, launched, in_use, unused, newest = (version.id for version in old)
    launch = rows.launch("pending", 40 * DAY)  # kept, and so is its delivery
    with sessions.begin() as session:
        delivery = session.scalar(select(Launch.delivery_id).where(Launch.id == launch))
        session.execute(
            update(Delivery).where(Delivery.id == delivery).values(rules_version_id=judged)
        )
        session.execute(update(Launch).where(Launch.id == launch).values(rules_version_id=launched))

    cutoffs = Cutoffs.at(NOW, 30 * DAY, timedelta(0), old[2].content_hash)
    pruned = prune(sessions, cutoffs)

    with sessions() as session:
        left = list(session.scalars(select(RulesVersion.id).order_by(RulesVersion.id)))
    assert pruned.rules_versions == 1
    assert left == [judged, launched, in_use, newest]
    assert unused not in left
