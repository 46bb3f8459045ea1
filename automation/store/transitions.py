"""An operator's retry and cancel: plan which launches change (and which are refused,
with a reason each), show the plan, then apply it.

The change itself is `outbox`'s guarded transition, so a launch a dispatcher claimed
between planning and applying is left alone and reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from automation.store import outbox, states, story
from automation.store.states import LaunchStatus
from automation.store.story import LaunchRecord


@dataclass(frozen=True, slots=True)
class Transition:
    """An operator's change of launch status: which statuses allow it, what it does."""

    verb: str
    done: str
    allowed: tuple[LaunchStatus, ...]
    to: LaunchStatus
    apply: Callable[[Session, Sequence[int], datetime], list[int]]


RETRY = Transition("retry", "retried", states.RETRYABLE, LaunchStatus.PENDING, outbox.retry)
CANCEL = Transition(
    "cancel", "cancelled", states.CANCELLABLE, LaunchStatus.CANCELLED, outbox.cancel
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a retry or cancel would change, and what it refuses, before it runs."""

    transition: Transition
    targets: tuple[LaunchRecord, ...]
    refused: tuple[str, ...]

    @property
    def uncertain(self) -> int:
        """Targets whose first send may have reached amoCRM: a retry may send twice."""
        return sum(row.status is LaunchStatus.UNCERTAIN for row in self.targets)


def plan_by_ids(session: Session, transition: Transition, ids: Sequence[int]) -> Plan:
    """Launches named by id; each missing or not-allowed one is refused with a reason."""
    found = story.launches_by_id(session, ids)
    targets, refused = [], []
    for launch_id in dict.fromkeys(ids):
        row = found.get(launch_id)
        if row is None:
            refused.append(f"launch #{launch_id}: refused: it does not exist")
        elif row.status not in transition.allowed:
            refused.append(_refusal(transition, row))
        else:
            targets.append(row)
    return Plan(transition, tuple(targets), tuple(refused))


def _refusal(transition: Transition, row: LaunchRecord) -> str:
    *others, last = (status.value for status in transition.allowed)
    allowed = f"{', '.join(others)} or {last}" if others else last
    return (
        f"launch #{row.id}: refused: it is {row.status.value}; "
        f"only {allowed} launches can be {transition.done}"
    )


def plan_by_status(
    session: Session,
    transition: Transition,
    statuses: Sequence[LaunchStatus],
    *,
    rule: str | None = None,
    settled_since: datetime | None = None,
) -> Plan:
    """Every launch in `statuses` (all allowed by `transition`), oldest first,
    optionally of one rule and settled (failed, became uncertain) since a moment."""
    assert set(statuses) <= set(transition.allowed), "statuses the transition refuses"
    rows = story.launches_in(session, statuses, rule=rule, settled_since=settled_since)
    return Plan(transition, tuple(rows), ())


def apply_plan(session: Session, plan: Plan, now: datetime) -> tuple[list[int], list[str]]:
    """Run the plan's transition; returns the ids changed and one message per target
    that changed status since it was planned (a dispatcher claimed it, say)."""
    changed: list[int] = []
    ids = [row.id for row in plan.targets]
    for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        changed += plan.transition.apply(session, ids[start : start + 500], now)
    done = set(changed)
    missed = [
        f"launch #{row.id}: not {plan.transition.done}: it left {row.status.value} meanwhile"
        for row in plan.targets
        if row.id not in done
    ]
    return changed, missed
