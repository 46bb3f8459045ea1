"""Stored deliveries run through rules again: for real (`replay`), as a dry run that
predicts the real run exactly, or under two rules files to compare them (`rules diff`).

Deliveries are read a batch per short transaction, decoded with their stored content
type. Replays store launches through `intake.enqueue_launches`, so de-duplication and
cooldowns work as they do for live webhooks; dry runs and diffs roll every batch back.
Nothing here prints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from automation.errors import PayloadError
from automation.events.payloads import ENTITY_KINDS, Payload, decode_body
from automation.rules.chat import Chat, Occupant, busy
from automation.rules.load import PlannedLaunch, RuleSet
from automation.store import intake, versions
from automation.store.models import Delivery
from automation.store.states import LaunchStatus
from automation.store.versions import StoredVersion

#: Deliveries read per transaction by replays and diffs: short transactions, because on
#: SQLite every transaction holds the write lock that webhooks wait for.
BATCH = 200


# ---------------------------------------------------------------- stored deliveries


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    """A stored webhook body, decoded again (None when it no longer decodes)."""

    id: int
    received_at: datetime
    payload: Payload | None


def stored_deliveries(
    sessions: sessionmaker[Session], since: datetime, until: datetime | None
) -> Iterator[tuple[Session, list[StoredDelivery]]]:
    """Deliveries received in [since, until), in id order, a batch per transaction.

    Yields each batch with its open session; the transaction commits after the
    caller's loop body, unless that body rolled it back. Bodies are decoded with
    their stored content type, so JSON and form bodies both replay.
    """
    after = 0
    while True:
        with sessions.begin() as session:
            statement = select(
                Delivery.id, Delivery.received_at, Delivery.content_type, Delivery.body
            ).where(Delivery.received_at >= since, Delivery.id > after)
            if until is not None:
                statement = statement.where(Delivery.received_at < until)
            rows = session.execute(statement.order_by(Delivery.id).limit(BATCH)).all()
            if not rows:
                return
            after = rows[-1].id
            yield session, [StoredDelivery(r.id, r.received_at, _decode(r)) for r in rows]


def _decode(row: Any) -> Payload | None:
    try:
        # As of its arrival: a replay keys each change as the first delivery did.
        return decode_body(row.body, row.content_type, received_at=row.received_at)
    except PayloadError:
        return None


def _planned(rules: RuleSet, payload: Payload, now: datetime) -> list[PlannedLaunch]:
    return rules.plan(payload.events, now)


# ------------------------------------------------------------------------- replay


@dataclass
class Tally:
    """What a replay did (or would do) for one rule."""

    added: int = 0
    skipped: int = 0
    duplicates: int = 0


@dataclass
class ReplayReport:
    """The outcome of a replay, per rule in the order rules first produced a launch."""

    deliveries: int = 0
    undecodable: int = 0
    rules: dict[str, Tally] = field(default_factory=dict)
    #: The rules version the replay judged with (recorded on the launches it added);
    #: None for a dry run of a content no server stored yet.
    version: StoredVersion | None = None

    def count(self, rule: str, outcome: LaunchStatus | None) -> None:
        """Count one planned launch: stored as `outcome`, or None for a duplicate."""
        tally = self.rules.setdefault(rule, Tally())
        tally.added += outcome is LaunchStatus.PENDING
        tally.skipped += outcome is LaunchStatus.SKIPPED
        tally.duplicates += outcome is None

    def total(self) -> Tally:
        """The tallies of all rules added up."""
        tallies = self.rules.values()
        return Tally(
            sum(t.added for t in tallies),
            sum(t.skipped for t in tallies),
            sum(t.duplicates for t in tallies),
        )


@dataclass
class _DryRunMemory:
    """What earlier batches of a dry run would have added, though they rolled back.

    A real replay commits batch by batch, so a later batch sees earlier launches as
    duplicates, as a cooldown's earlier launch, or as another bot holding the chat
    (all replayed launches share one `now`); a dry run must count them the same way to
    predict the real run exactly.
    """

    digests: set[str] = field(default_factory=set)
    targets: set[tuple[int, int, int]] = field(default_factory=set)
    chats: list[Occupant] = field(default_factory=list)

    def recall(self, launch: PlannedLaunch, outcome: LaunchStatus | None) -> LaunchStatus | None:
        """The outcome the real run would have had, given what earlier batches added."""
        digest = intake.dedupe_digest(launch)
        target = (launch.bot_id, launch.entity_type, launch.entity_id)
        if outcome is None or digest in self.digests:
            return None
        if outcome is LaunchStatus.PENDING and launch.cooldown and target in self.targets:
            outcome = LaunchStatus.SKIPPED
        chat = Chat.of(launch)
        if outcome is LaunchStatus.PENDING:
            decision = busy(launch, chat, self.chats, launch.not_before)
            if decision is not None and decision.action == "skip":
                outcome = LaunchStatus.SKIPPED
        self.digests.add(digest)
        if outcome is LaunchStatus.PENDING:
            self.targets.add(target)
            self.chats.append(
                Occupant(None, launch.rule, launch.bot_id, "pending", launch.not_before, chat)
            )
        return outcome


def replay(
    sessions: sessionmaker[Session],
    rules: RuleSet,
    since: datetime,
    until: datetime | None,
    now: datetime,
    *,
    dry_run: bool = False,
) -> ReplayReport:
    """Run stored deliveries (unrecognized ones too) through `rules` as of `now`.

    Launches are stored for their original delivery with the webhook's de-duplication
    and cooldown, so replaying twice adds nothing; no delivery row is added or changed.
    A dry run does the same inserts and rolls each batch back.
    """
    report = ReplayReport()
    with sessions.begin() as session:
        if dry_run:
            report.version = versions.find_version(session, rules.content_hash)
        else:
            report.version = versions.record_in(session.connection(), rules, now)
    memory = _DryRunMemory() if dry_run else None
    for session, batch in stored_deliveries(sessions, since, until):
        for delivery in batch:
            _replay_one(session, rules, delivery, now, report, memory)
        if dry_run:
            session.rollback()
    return report


def _replay_one(
    session: Session,
    rules: RuleSet,
    delivery: StoredDelivery,
    now: datetime,
    report: ReplayReport,
    memory: _DryRunMemory | None,
) -> None:
    report.deliveries += 1
    if delivery.payload is None:
        report.undecodable += 1
        return
    planned = _planned(rules, delivery.payload, now)
    version = report.version.id if report.version else None
    outcomes = intake.enqueue_launches(session.connection(), delivery.id, planned, now, version)
    for launch, stored in zip(planned, outcomes, strict=True):
        report.count(launch.rule, memory.recall(launch, stored) if memory else stored)


def describe_replay(report: ReplayReport, dry_run: bool) -> list[str]:
    """`replay` as text: one line per rule, then the totals."""
    head = f"{report.deliveries} deliveries replayed"
    if dry_run:
        head = f"dry run, nothing written: {report.deliveries} deliveries replayed"
    if report.undecodable:
        head += f" ({report.undecodable} no longer decode and were left out)"
    version = report.version
    lines = [head, f"rules: version {version.describe()}" if version else "rules: not stored yet"]
    for rule, tally in report.rules.items():
        lines.append(f"  {rule}: {_tally_text(tally, dry_run)}")
    lines.append(f"total: {_tally_text(report.total(), dry_run)}")
    return lines


def _tally_text(tally: Tally, dry_run: bool) -> str:
    would = "would be " if dry_run else ""
    return (
        f"{tally.added} {would}added, {tally.skipped} {would}skipped (cooldown or busy chat), "
        f"{tally.duplicates} already stored"
    )


# ---------------------------------------------------------------------- rules diff


@dataclass(frozen=True, slots=True, order=True)
class DiffKey:
    """A launch as the diff compares it: what runs on what, for which change; no times."""

    rule: str
    bot_id: int
    entity_type: int
    entity_id: int
    change: str

    def describe(self) -> str:
        kind = ENTITY_KINDS.get(self.entity_type, str(self.entity_type))
        return f"{self.rule}: bot {self.bot_id} on {kind} {self.entity_id} ({self.change})"


@dataclass(frozen=True, slots=True)
class RulesDiff:
    """Launches the new rules add and drop on stored deliveries, and per-rule counts."""

    deliveries: int
    added: tuple[DiffKey, ...]
    dropped: tuple[DiffKey, ...]
    kept: Counter[str]
    #: The stored versions of the two files, None where no server loaded that content.
    old_version: StoredVersion | None = None
    new_version: StoredVersion | None = None

    def per_rule(self) -> dict[str, tuple[int, int, int]]:
        """rule → (kept, added, dropped), rules sorted by name."""
        added = Counter(key.rule for key in self.added)
        dropped = Counter(key.rule for key in self.dropped)
        names = sorted(set(self.kept) | set(added) | set(dropped))
        return {name: (self.kept[name], added[name], dropped[name]) for name in names}


def diff_rules(
    sessions: sessionmaker[Session],
    old: RuleSet,
    new: RuleSet,
    since: datetime,
    until: datetime | None,
) -> RulesDiff:
    """Compare the launches `old` and `new` make of the deliveries in [since, until).

    Each delivery is judged as of the moment it was received, by both rule sets alike,
    so only the rules differ. Cooldowns are not applied (they depend on what ran).
    Writes nothing: every batch's transaction is rolled back.
    """
    before: set[DiffKey] = set()
    after: set[DiffKey] = set()
    count = 0
    for session, batch in stored_deliveries(sessions, since, until):
        session.rollback()
        for delivery in batch:
            count += 1
            if delivery.payload is not None:
                before.update(_keys(old, delivery))
                after.update(_keys(new, delivery))
    kept = Counter(key.rule for key in before & after)
    with sessions() as session:
        stored = [versions.find_version(session, rules.content_hash) for rules in (old, new)]
    added, dropped = tuple(sorted(after - before)), tuple(sorted(before - after))
    return RulesDiff(count, added, dropped, kept, *stored)


def _keys(rules: RuleSet, delivery: StoredDelivery) -> Iterator[DiffKey]:
    assert delivery.payload is not None
    for launch in _planned(rules, delivery.payload, delivery.received_at):
        yield DiffKey(
            launch.rule, launch.bot_id, launch.entity_type, launch.entity_id, launch.event.change
        )


def describe_diff(diff: RulesDiff, old_name: str, new_name: str) -> list[str]:
    """`rules diff` as text: counts per rule, then `+`/`-` per launch added/dropped."""
    lines = [f"{old_name} → {new_name}: {diff.deliveries} stored deliveries compared"]
    for name, version in ((old_name, diff.old_version), (new_name, diff.new_version)):
        lines.append(f"  {name}: " + (f"version {version.describe()}" if version else "not stored"))
    for rule, (kept, added, dropped) in diff.per_rule().items():
        lines.append(f"  {rule}: {kept} kept, {added} added, {dropped} dropped")
    if not diff.added and not diff.dropped:
        lines.append("no differences")
    lines += [f"+ {key.describe()}" for key in diff.added]
    lines += [f"- {key.describe()}" for key in diff.dropped]
    return lines
