"""Retention: forget old settled launches and old deliveries, a few hundred rows at a time.

Every webhook body and every launch is kept, so the launch log can answer "why did my
bot (not) start?". Kept forever they grow without bound. A prune removes launches that
are settled (`sent`, `failed`, `dry_run`, `cancelled`, `skipped`) and older than the
cut-off, their `call_launches` links, the API calls nothing references any more, and
the deliveries older than the cut-off that no launch points to, and the rules versions
first loaded before it that no delivery or launch names any more. `pending`, `sending`
and `uncertain` launches are never touched, nor the deliveries they came from, nor the
other launches of those deliveries: a delivery and its launches go together.

Each batch is one short transaction: on SQLite a prune holds the only write lock, and
webhooks must not wait long behind it. On PostgreSQL the rows of a batch are locked
with `SKIP LOCKED`, so a launch an operator is retrying at that moment is left alone.
A `sent` launch is what a rule's cooldown looks for: removing it inside the cooldown
would let the bot start again on the same customer, so sent and dry-run launches are
kept at least as long as the longest cooldown of the rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased, sessionmaker

from automation.config import Settings
from automation.errors import AutomationError
from automation.rules.load import RuleSet, load_rules_file
from automation.store import states
from automation.store.database import for_update, rowcount
from automation.store.models import ApiCall, CallLaunch, Delivery, Launch, RulesVersion

log = logging.getLogger("automation.retention")

#: Rows deleted per transaction: small enough that a webhook waits milliseconds.
BATCH_SIZE = 500
#: How often a dispatcher applies RETENTION_DAYS.
PRUNE_EVERY = 24 * 3600.0

#: The statuses retention treats alike (defined in `states`).
UNCOUNTED, COUNTED, KEPT = states.UNCOUNTED, states.COUNTED, states.KEPT


def longest_cooldown(rules: RuleSet) -> timedelta:
    """The longest cooldown of any rule, disabled ones included (they may come back)."""
    return max((rule.cooldown for rule in rules.rules if rule.cooldown), default=timedelta(0))


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """What is old: rows before `settled` go; sent and dry-run launches before `counted`.

    `rules_hash` is the rules file's content in use, whose version is kept however
    old: servers write its id into every new delivery.
    """

    settled: datetime
    counted: datetime
    rules_hash: str | None = None

    @classmethod
    def at(
        cls,
        now: datetime,
        older_than: timedelta,
        cooldown: timedelta,
        rules_hash: str | None = None,
    ) -> Cutoffs:
        return cls(now - older_than, now - max(older_than, cooldown), rules_hash)


@dataclass(slots=True)
class Pruned:
    """Rows deleted, per table."""

    launches: int = 0
    call_links: int = 0
    api_calls: int = 0
    deliveries: int = 0
    rules_versions: int = 0

    def __str__(self) -> str:
        return (
            f"launches={self.launches} call_links={self.call_links} "
            f"api_calls={self.api_calls} deliveries={self.deliveries} "
            f"rules_versions={self.rules_versions}"
        )


# ------------------------------------------------------------------------------ batches


def _locked(session: Session, query: Select[Any]) -> Select[Any]:
    """Skip rows someone else holds: a prune never waits for live traffic."""
    return for_update(session, query, skip_locked=True)


def _old(launch: type[Launch], cutoffs: Cutoffs) -> ColumnElement[bool]:
    """Settled, and untouched since the cut-off (an operator's retry touches it)."""
    return and_(
        launch.updated_at < cutoffs.settled,
        or_(
            and_(launch.status.in_(UNCOUNTED), launch.created_at < cutoffs.settled),
            and_(launch.status.in_(COUNTED), launch.created_at < cutoffs.counted),
        ),
    )


def _prunable(cutoffs: Cutoffs) -> ColumnElement[bool]:
    """Old, and so is every other launch of its delivery.

    A delivery and its launches go together: `replay` of a delivery that lost some of
    its launches would add them again (their dedupe keys gone with them) and start
    those bots a second time.
    """
    sibling = aliased(Launch)
    return and_(
        _old(Launch, cutoffs),
        or_(
            Launch.delivery_id.is_(None),
            ~exists().where(sibling.delivery_id == Launch.delivery_id, ~_old(sibling, cutoffs)),
        ),
    )


def prune_launches(session: Session, cutoffs: Cutoffs, limit: int, pruned: Pruned) -> int:
    """Delete up to `limit` old settled launches and their call links; returns how many
    were selected (fewer than `limit`: none left)."""
    query = select(Launch.id).where(_prunable(cutoffs)).order_by(Launch.id).limit(limit)
    ids = list(session.scalars(_locked(session, query)))
    if ids:
        # Links first: the foreign key would cascade, but then nobody counts them.
        pruned.call_links += _delete(session, CallLaunch, CallLaunch.launch_id.in_(ids))
        pruned.launches += _delete(session, Launch, Launch.id.in_(ids))
    return len(ids)


def _unreferenced_call() -> ColumnElement[bool]:
    return and_(
        ~exists().where(CallLaunch.call_id == ApiCall.id),
        ~exists().where(Launch.call_id == ApiCall.id),
    )


def prune_api_calls(session: Session, cutoffs: Cutoffs, limit: int, pruned: Pruned) -> int:
    """Delete up to `limit` API calls older than the cut-off that no launch refers to."""
    old = ApiCall.started_at < cutoffs.settled
    selected, pruned_now = _prune_unreferenced(session, ApiCall, limit, _unreferenced_call(), old)
    pruned.api_calls += pruned_now
    return selected


def _launchless() -> ColumnElement[bool]:
    return ~exists().where(Launch.delivery_id == Delivery.id)


def prune_deliveries(session: Session, cutoffs: Cutoffs, limit: int, pruned: Pruned) -> int:
    """Delete up to `limit` deliveries older than the cut-off that no launch came from
    (and that are not still queued: their launches are yet to come)."""
    old = and_(
        Delivery.received_at < cutoffs.settled, Delivery.status != states.DeliveryStatus.QUEUED
    )
    selected, pruned_now = _prune_unreferenced(session, Delivery, limit, _launchless(), old)
    pruned.deliveries += pruned_now
    return selected


def _unreferenced_version(cutoffs: Cutoffs) -> ColumnElement[bool]:
    """No delivery or launch names it, and it is not the rules file in use."""
    conditions = [
        ~exists().where(Delivery.rules_version_id == RulesVersion.id),
        ~exists().where(Launch.rules_version_id == RulesVersion.id),
    ]
    if cutoffs.rules_hash is not None:
        conditions.append(RulesVersion.content_hash != cutoffs.rules_hash)
    return and_(*conditions)


def prune_versions(session: Session, cutoffs: Cutoffs, limit: int, pruned: Pruned) -> int:
    """Delete up to `limit` rules versions first loaded before the cut-off that nothing
    refers to any more. The newest version stays too: a server may have loaded it and
    be about to write its id, even when the file in use is not known here."""
    newest = select(func.max(RulesVersion.id)).scalar_subquery()
    old = (RulesVersion.first_loaded_at < cutoffs.settled, RulesVersion.id < newest)
    unreferenced = _unreferenced_version(cutoffs)
    selected, pruned_now = _prune_unreferenced(session, RulesVersion, limit, unreferenced, *old)
    pruned.rules_versions += pruned_now
    return selected


def _prune_unreferenced(
    session: Session,
    model: type[ApiCall | Delivery | RulesVersion],
    limit: int,
    unreferenced: ColumnElement[bool],
    *old: ColumnElement[bool],
) -> tuple[int, int]:
    """Delete up to `limit` rows of `model` that are `old` and `unreferenced`, in id
    order; returns (rows selected, rows deleted).

    The lock and the re-check of `unreferenced` in the DELETE keep a row that gained a
    reference in between, such as a delivery that a replay is adding launches to at
    this very moment.
    """
    query = select(model.id).where(*old, unreferenced).order_by(model.id).limit(limit)
    ids = list(session.scalars(_locked(session, query)))
    if not ids:
        return 0, 0
    return len(ids), _delete(session, model, model.id.in_(ids), unreferenced)


def _delete(session: Session, model: type[Any], *conditions: ColumnElement[bool]) -> int:
    statement = delete(model).where(*conditions).execution_options(synchronize_session=False)
    return rowcount(session.execute(statement))


# ---------------------------------------------------------------------------- passes

Batch = Callable[[Session, Cutoffs, int, Pruned], int]
#: In this order: launches free their calls and deliveries of references, and both
#: free rules versions.
_STAGES: tuple[Batch, ...] = (prune_launches, prune_api_calls, prune_deliveries, prune_versions)


@dataclass
class PrunePass:
    """One pass over the three tables, one batch (one transaction) per `step()`.

    Stepwise so a dispatcher can interleave it with sending: its loop never stalls for
    a whole pass, however much there is to delete.
    """

    sessions: sessionmaker[Session]
    cutoffs: Cutoffs
    batch_size: int = BATCH_SIZE
    pruned: Pruned = field(default_factory=Pruned)
    _stage: int = field(default=0, init=False)

    @property
    def done(self) -> bool:
        return self._stage >= len(_STAGES)

    def step(self) -> bool:
        """Delete one batch; True once every stage is exhausted."""
        if not self.done:
            with self.sessions.begin() as session:
                selected = _STAGES[self._stage](session, self.cutoffs, self.batch_size, self.pruned)
            if selected < self.batch_size:
                self._stage += 1
        return self.done

    def run(self) -> Pruned:
        """Step until done (the CLI's way: nothing else waits on this process)."""
        while not self.step():
            pass
        return self.pruned


def prune(
    sessions: sessionmaker[Session], cutoffs: Cutoffs, batch_size: int = BATCH_SIZE
) -> Pruned:
    """Delete everything older than `cutoffs`, in batches of `batch_size` rows."""
    return PrunePass(sessions, cutoffs, batch_size).run()


# ------------------------------------------------------------------- the daily prune


class DailyPrune:
    """RETENTION_DAYS as a dispatcher applies it: a pass a day, a batch per `tick()`.

    The first pass starts at the first tick. The cooldowns are read from the rules file
    when a pass starts; a file that cannot be read skips that day's pass rather than
    guess (and guessing short would start bots twice).
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        every: float = PRUNE_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._days = settings.retention_days
        self._rules_file = settings.rules_file
        self._sessions = sessions
        self._every = every
        self._clock = clock
        self._next_at = clock()
        self._pass: PrunePass | None = None

    def tick(self) -> None:
        """Run one batch if a pass is under way or due; otherwise return at once."""
        if self._days is None:
            return
        if self._pass is None:
            if self._clock() < self._next_at:
                return
            self._next_at = self._clock() + self._every
            self._pass = self._start(timedelta(days=self._days))
        if self._pass is not None:
            self._step(self._pass)

    def _start(self, older_than: timedelta) -> PrunePass | None:
        try:
            rules = load_rules_file(self._rules_file)
        except AutomationError as exc:
            log.error("retention skipped today: cannot read the rules' cooldowns: %s", exc)
            return None
        cutoffs = Cutoffs.at(
            datetime.now(UTC), older_than, longest_cooldown(rules), rules.content_hash
        )
        return PrunePass(self._sessions, cutoffs)

    def _step(self, current: PrunePass) -> None:
        try:
            done = current.step()
        except SQLAlchemyError as exc:
            log.error("retention pass stopped error=%s; next pass in a day", type(exc).__name__)
            self._pass = None
            return
        if done:
            self._pass = None
            log.info(
                "pruned %s older_than=%sd kept_counted_since=%s",
                current.pruned,
                self._days,
                f"{current.cutoffs.counted:%Y-%m-%dT%H:%M:%S}Z",
            )


def describe_cutoffs(cutoffs: Cutoffs) -> str:
    """One line for the operator: what goes, and why sent launches may stay longer."""
    text = f"settled launches and deliveries before {cutoffs.settled:%Y-%m-%d %H:%M}Z"
    if cutoffs.counted < cutoffs.settled:
        text += (
            f"; sent and dry_run launches only before {cutoffs.counted:%Y-%m-%d %H:%M}Z, "
            "as a rule's cooldown still counts the later ones"
        )
    return text
