"""Why a delivery started the bots it did, and no others: one explanation, as data.

`explain_delivery` judges a stored webhook again, with the rules version that judged
it on arrival and at its arrival time, and adds what only the database knows: the
launch each matching rule made, the earlier launch a cooldown counted, the launch a
duplicate already was. The result is a pydantic model that `deliveries show` prints,
`GET /api/deliveries/<id>/explain` answers as JSON and the console renders
(`/ui/deliveries/<id>`): one implementation, three views. `describe_explanation` is
its text, printed by the CLI and folded under the console's page. It writes nothing.

A delivery stored before versions were recorded, or whose version was pruned, is
judged with today's rules file, and `rules.note` says so.
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from automation.errors import PayloadError, RulesError
from automation.events.payloads import ENTITY_KINDS, Event, decode_body
from automation.limits import MAX_ID
from automation.rules.load import Decision, RuleSet
from automation.rules.matchers import Failure
from automation.rules.verdicts import Outcome
from automation.store.deliveries import DeliveryRow, Shape, _row, entities_of, expansions_of
from automation.store.intake import dedupe_digest
from automation.store.models import Delivery, Launch
from automation.store.states import LaunchStatus
from automation.store.versions import StoredVersion, get_version

#: How an intake cooldown reason names the earlier launch (`intake._cooldown_reason`).
_EARLIER = re.compile(r"launch #(\d+)")


class Verdict(enum.StrEnum):
    """What came of one rule on one event: the rules' outcomes, and for a rule that
    would launch, what the database shows became of it."""

    #: This event's launch is in the log (`launch_id`).
    LAUNCHED = "launched"
    #: Stored as `skipped`: the bot ran on the entity inside the rule's cooldown
    #: (`launch_id` the skipped one, `earlier_launch_id` the one the cooldown counted).
    COOLDOWN = "cooldown"
    #: The same change already had its launch (`launch_id`), from an earlier webhook
    #: or an earlier event of this one.
    DUPLICATE = "duplicate"
    #: Another bot's launch held the chat (one bot per chat): this event's launch
    #: (`launch_id`) was stored `skipped`, or `pending` to wait, yielding to
    #: `earlier_launch_id`.
    BUSY = "busy"
    #: Would launch, but no launch with its key is stored (judged with other rules
    #: than on arrival, or pruned).
    NOT_STORED = "not_stored"
    CONDITIONS_FAILED = Outcome.CONDITIONS_FAILED.value
    DISABLED = Outcome.DISABLED.value
    OUTGOING_MESSAGE = Outcome.OUTGOING_MESSAGE.value
    UNREADABLE = Outcome.UNREADABLE.value
    ENTITY_MISSING = Outcome.ENTITY_MISSING.value
    OUTSIDE_HOURS = Outcome.OUTSIDE_HOURS.value
    OUTSIDE_CALENDAR = Outcome.OUTSIDE_CALENDAR.value
    STOPPED = Outcome.STOPPED.value


class FailedCondition(Shape):
    """A `when:` condition the event failed."""

    field: str
    expected: str
    #: The event's value as shown; None when the field is missing.
    got: str | None


class Hours(Shape):
    """Outside active hours: the due moment as local time in the window's zone, and
    when the window opens next."""

    zone: str
    local_time: datetime
    next_open: datetime


class RuleVerdict(Shape):
    """One rule on one event: matched or not, why, and the launch it concerns."""

    rule: str
    matched: bool
    verdict: Verdict
    #: The same in words, as `rules test` prints it.
    reason: str
    failed_conditions: list[FailedCondition] = Field(default_factory=list)
    #: ENTITY_MISSING: the rule's entity and the entities the event has.
    entity: str | None = None
    carried: list[str] = Field(default_factory=list)
    hours: Hours | None = None
    #: STOPPED: the earlier rule whose `stop: true` hid the event.
    stopped_by: str | None = None
    #: LAUNCHED / COOLDOWN: this event's launch; DUPLICATE: the one that existed.
    launch_id: int | None = None
    earlier_launch_id: int | None = None


class EventVerdicts(Shape):
    """One event of the webhook and every rule that listens to its type."""

    index: int
    type: str
    group: str
    entities: dict[str, int]
    change: str
    rules: list[RuleVerdict]


class RulesUsed(Shape):
    """The rules the explanation judged with."""

    #: The stored version, when it judged; None when today's file did.
    version_id: int | None
    content_hash: str
    first_loaded_at: datetime | None
    path: str
    #: Why today's file judged instead of the stored version (None when it did not).
    note: str | None


class LaunchMade(Shape):
    """A launch stored for this delivery (by the webhook, or by a later replay)."""

    id: int
    rule: str
    bot_id: int
    entity: str | None
    entity_id: int
    status: LaunchStatus
    reason: str | None
    created_at: datetime
    rules_version_id: int | None


class VerdictCount(Shape):
    """How many rule verdicts of every event of the body came out as `verdict`."""

    verdict: Verdict
    count: int


class DeliveryExplanation(Shape):
    """A delivery, the rules that judged it, a window of its events' verdicts and of
    its launches (a large webhook has tens of thousands), and every event counted."""

    delivery: DeliveryRow
    rules: RulesUsed
    #: Why the body no longer decodes (then `events` is empty).
    decode_error: str | None
    #: The events from the `offset`-th (0 = the first), at most `limit` of them.
    events: list[EventVerdicts]
    #: The launches stored for it, by id, in the same window.
    launches: list[LaunchMade]
    offset: int = 0
    limit: int = 0
    #: Events in the body and launches stored for it, all of them.
    event_count: int = 0
    launch_count: int = 0
    #: Every event's rule verdicts counted by verdict, shown or not, most first.
    verdicts: list[VerdictCount] = Field(default_factory=list)
    #: Events that no rule listens to.
    events_without_rules: int = 0


CurrentRules = Callable[[], RuleSet]

#: Events (and launches) an explanation shows unless asked for another window.
EVENTS_SHOWN = 50
#: Entities its text lists (the model carries `deliveries.ENTITIES_SHOWN`).
ENTITIES_LISTED = 5


def explain_delivery(
    session: Session,
    delivery_id: int,
    current: CurrentRules,
    *,
    use_current: bool = False,
    offset: int = 0,
    limit: int = EVENTS_SHOWN,
) -> DeliveryExplanation | None:
    """Explain the delivery, or None when it is not stored. `current` loads today's
    rules file, only when the stored version cannot judge (or `use_current`).

    Every event is judged (the counts by verdict cover them all), but only the window
    of `limit` events from `offset` is spelled out, and the launches in the same window."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        return None
    rules, used = judging_rules(session, delivery, current, use_current=use_current)
    mine = Launch.delivery_id == delivery_id
    launches = session.scalars(
        select(Launch).where(mine).order_by(Launch.id).offset(offset).limit(limit)
    )
    launch_count = session.scalar(select(func.count()).select_from(Launch).where(mine)) or 0
    events, decode_error, event_count = [], None, 0
    tally: Counter[Verdict] = Counter()
    unheard = 0
    try:
        body, received_at = bytes(delivery.body), delivery.received_at
        payload = decode_body(body, delivery.content_type, received_at=received_at)
    except PayloadError as exc:
        decode_error = str(exc)
    else:
        judged = [(event, rules.explain(event, delivery.received_at)) for event in payload.events]
        stored = _stored_launches(session, judged)
        event_count = len(judged)
        for place, (event, decisions) in enumerate(judged):
            tally.update(_verdict_only(delivery, event, d, stored) for d in decisions)
            unheard += not decisions
            if offset <= place < offset + limit:
                events.append(_event(rules, delivery, event, decisions, stored))
    entities = entities_of(session, [delivery.id]).get(delivery.id)
    return DeliveryExplanation(
        delivery=_row(delivery, entities, expansions_of(session, [delivery.id]).get(delivery.id)),
        rules=used,
        decode_error=decode_error,
        events=events,
        launches=[_launch(launch) for launch in launches],
        offset=offset,
        limit=limit,
        event_count=event_count,
        launch_count=int(launch_count),
        verdicts=[VerdictCount(verdict=v, count=n) for v, n in tally.most_common()],
        events_without_rules=unheard,
    )


@dataclass(frozen=True, slots=True)
class StoredBody:
    """A stored webhook body with the rules to judge it by (`rules test --delivery`)."""

    body: bytes
    received_at: datetime
    rules: RuleSet
    rules_used: RulesUsed


def stored_body(
    session: Session, delivery_id: int, current: CurrentRules, *, use_current: bool = False
) -> StoredBody | None:
    """The delivery's body, arrival and judging rules; None when it is not stored."""
    delivery = session.get(Delivery, delivery_id) if delivery_id <= MAX_ID else None
    if delivery is None:
        return None
    rules, used = judging_rules(session, delivery, current, use_current=use_current)
    return StoredBody(bytes(delivery.body), delivery.received_at, rules, used)


def judging_rules(
    session: Session, delivery: Delivery, current: CurrentRules, *, use_current: bool = False
) -> tuple[RuleSet, RulesUsed]:
    """The rules that judged `delivery` on arrival, else today's file and why."""
    version_id = delivery.rules_version_id
    if use_current:
        return _today(current, "--current: judged with today's rules file, not the stored version")
    if version_id is None:
        return _today(
            current, "stored before rules versions were recorded: judged with today's file"
        )
    version = get_version(session, version_id)
    if version is None:
        note = f"rules version #{version_id} is no longer stored (pruned): judged with today's file"
        return _today(current, note)
    try:
        return version.rules(), _used(version)
    except RulesError as exc:
        problem = exc.problems[0] if exc.problems else str(exc)
        note = f"rules version #{version_id} no longer loads ({problem}): judged with today's file"
        return _today(current, note)


def describe_rules(used: RulesUsed) -> str:
    """`version #3 (sha256 …, first loaded … from rules.yaml)`, or today's file and why."""
    if used.version_id is None:
        return f"today's file {used.path} (sha256 {used.content_hash[:12]}); {used.note}"
    loaded = f"{used.first_loaded_at:%Y-%m-%d %H:%M:%S}Z" if used.first_loaded_at else "?"
    return (
        f"version #{used.version_id} (sha256 {used.content_hash[:12]}, first loaded "
        f"{loaded} from {used.path})"
    )


def _today(current: CurrentRules, note: str) -> tuple[RuleSet, RulesUsed]:
    rules = current()
    used = RulesUsed(
        version_id=None,
        content_hash=rules.content_hash,
        first_loaded_at=None,
        path=rules.filename,
        note=note,
    )
    return rules, used


def _used(version: StoredVersion) -> RulesUsed:
    return RulesUsed(
        version_id=version.id,
        content_hash=version.content_hash,
        first_loaded_at=version.first_loaded_at,
        path=version.path,
        note=None,
    )


@dataclass(frozen=True, slots=True)
class Stored:
    """What a verdict reads of a stored launch (a large webhook has tens of thousands:
    plain rows, not ORM objects, are read)."""

    id: int
    delivery_id: int | None
    event_group: str | None
    event_index: int | None
    status: LaunchStatus
    reason: str | None
    blocked_by: int | None


def _stored_launches(
    session: Session, judged: list[tuple[Event, list[Decision]]]
) -> dict[str, Stored]:
    """The stored launches with the dedupe keys these decisions would use, by key."""
    keys = [dedupe_digest(d.launch) for _, ds in judged for d in ds if d.launch is not None]
    if not keys:
        return {}
    found = session.execute(
        select(
            Launch.dedupe_key,
            Launch.id,
            Launch.delivery_id,
            Launch.event_group,
            Launch.event_index,
            Launch.status,
            Launch.reason,
            Launch.blocked_by,
        ).where(Launch.dedupe_key.in_(keys))
    )
    return {row[0]: Stored(*row[1:]) for row in found}


def _event(
    rules: RuleSet,
    delivery: Delivery,
    event: Event,
    decisions: list[Decision],
    stored: dict[str, Stored],
) -> EventVerdicts:
    return EventVerdicts(
        index=event.index,
        type=event.type,
        group=event.group,
        entities=dict(event.entities),
        change=event.change,
        rules=[_verdict(rules, delivery, event, d, stored) for d in decisions],
    )


def _verdict(
    rules: RuleSet,
    delivery: Delivery,
    event: Event,
    decision: Decision,
    stored: dict[str, Stored],
) -> RuleVerdict:
    why = decision.why
    if decision.launch is None:
        verdict, launch_id, earlier_id = Verdict(why.outcome.value), None, None
    else:
        launch = stored.get(dedupe_digest(decision.launch))
        verdict, launch_id, earlier_id = _launch_facts(delivery, event, launch)
    failed = []
    if why.outcome is Outcome.CONDITIONS_FAILED:
        failed = _failures(rules, decision, event)
    hours = why.hours
    return RuleVerdict(
        rule=decision.rule,
        matched=decision.matched,
        verdict=verdict,
        reason=decision.reason,
        failed_conditions=failed,
        entity=why.entity,
        carried=list(why.carried),
        hours=Hours(zone=hours.zone, local_time=hours.local_time, next_open=hours.next_open)
        if hours
        else None,
        stopped_by=why.stopped_by,
        launch_id=launch_id,
        earlier_launch_id=earlier_id,
    )


def _verdict_only(
    delivery: Delivery, event: Event, decision: Decision, stored: dict[str, Stored]
) -> Verdict:
    """`_verdict`'s verdict alone, for counting every event's cheaply."""
    if decision.launch is None:
        return Verdict(decision.why.outcome.value)
    return _launch_facts(delivery, event, stored.get(dedupe_digest(decision.launch)))[0]


def _failures(rules: RuleSet, decision: Decision, event: Event) -> list[FailedCondition]:
    """Every failed top-level condition (matching stopped at the first)."""
    rule = next(rule for rule in rules.rules if rule.name == decision.rule)
    try:
        failures = rule.condition.failures(event)
    except Exception:  # the first failure is known; the rest cannot be read
        failures = []
    if not failures and decision.why.failure is not None:
        failures = [decision.why.failure]
    return [_failed(failure) for failure in failures]


def _failed(failure: Failure) -> FailedCondition:
    return FailedCondition(field=failure.field, expected=failure.expected, got=failure.got)


def _launch_facts(
    delivery: Delivery, event: Event, launch: Stored | None
) -> tuple[Verdict, int | None, int | None]:
    """What became of a planned launch: (verdict, its launch, a cooldown's earlier one)."""
    if launch is None:
        return Verdict.NOT_STORED, None, None
    own = launch.delivery_id == delivery.id and (launch.event_group, launch.event_index) == (
        event.group[:100],
        event.index,
    )
    if not own:
        return Verdict.DUPLICATE, launch.id, None
    if launch.status is LaunchStatus.SKIPPED and (launch.reason or "").startswith("cooldown"):
        earlier = _EARLIER.search(launch.reason or "")
        return Verdict.COOLDOWN, launch.id, int(earlier[1]) if earlier else None
    if launch.blocked_by is not None:
        return Verdict.BUSY, launch.id, launch.blocked_by
    return Verdict.LAUNCHED, launch.id, None


def _launch(launch: Launch) -> LaunchMade:
    return LaunchMade(
        id=launch.id,
        rule=launch.rule,
        bot_id=launch.bot_id,
        entity=ENTITY_KINDS.get(launch.entity_type),
        entity_id=launch.entity_id,
        status=launch.status,
        reason=launch.reason,
        created_at=launch.created_at,
        rules_version_id=launch.rules_version_id,
    )


def describe_explanation(explanation: DeliveryExplanation) -> list[str]:
    """The explanation as text, as `deliveries show` prints it and the console folds
    under its page: the delivery, the rules, each event and rule, its launches."""
    d = explanation.delivery
    entities = ", ".join(f"{e.type} {e.id}" for e in d.entities[:ENTITIES_LISTED]) or "none"
    hidden = len(d.entities) - ENTITIES_LISTED + d.more_entities
    entities += f" (+{hidden} more)" if hidden > 0 else ""
    lines = [
        f"delivery #{d.id} received {d.received_at:%Y-%m-%d %H:%M:%S}Z, {d.status.value}: "
        f"{d.events} event(s), {d.launches} launch(es), {d.duplicates} duplicate(s)",
        f"  entities: {entities}",
        f"  rules: {describe_rules(explanation.rules)}",
    ]
    if d.expansion is not None:
        lines.insert(1, f"  large webhook stored raw: {d.expansion.describe()}")
    if explanation.decode_error:
        lines.append(f"  body no longer decodes: {explanation.decode_error}")
    for event in explanation.events:
        named = ", ".join(f"{kind} {number}" for kind, number in event.entities.items())
        lines.append(f"event {event.index} {event.type} ({event.group}) on {named or 'no entity'}")
        if not event.rules:
            lines.append(f"  no rules listen to {event.type}")
        lines += [f"  {line}" for verdict in event.rules for line in describe_verdict(verdict)]
    lines += _window_lines(explanation)
    if not explanation.launches:
        lines.append("launches: none" if not explanation.launch_count else "launches: none here")
    for launch in explanation.launches:
        version = "-" if launch.rules_version_id is None else f"#{launch.rules_version_id}"
        lines.append(
            f"launch #{launch.id} {launch.status.value}: rule {launch.rule}, bot {launch.bot_id} "
            f"on {launch.entity or '?'} {launch.entity_id} (rules {version})"
            + (f": {launch.reason}" if launch.reason else "")
        )
    if len(explanation.launches) < explanation.launch_count:
        first = explanation.offset
        lines.append(
            f"launches {first}-{first + len(explanation.launches) - 1} shown of "
            f"{explanation.launch_count} (by id, the same window as the events)"
        )
    return lines


def _window_lines(explanation: DeliveryExplanation) -> list[str]:
    """When not every event is shown: which are, and every event counted by verdict."""
    count, first = explanation.event_count, explanation.offset
    if len(explanation.events) == count:
        return []
    shown = (
        f"events {first}-{first + len(explanation.events) - 1}"
        if explanation.events
        else f"no event from {first}"
    )
    counts = ", ".join(f"{c.verdict.value} {c.count}" for c in explanation.verdicts) or "none"
    return [
        f"{shown} shown of {count} (see others with --events FROM:TO or --event N)",
        f"all {count} events' rule verdicts: {counts}; "
        f"{explanation.events_without_rules} event(s) no rule listens to",
    ]


def describe_verdict(verdict: RuleVerdict) -> list[str]:
    """`rule NAME: VERDICT — detail`, then one line per failed condition."""
    head = f"rule {verdict.rule}: {verdict.verdict.value}"
    detail = {
        Verdict.LAUNCHED: f"launch #{verdict.launch_id} ({verdict.reason})",
        Verdict.COOLDOWN: f"launch #{verdict.launch_id} skipped: earlier launch "
        f"#{verdict.earlier_launch_id} inside the cooldown",
        Verdict.DUPLICATE: f"this change already has launch #{verdict.launch_id}",
        Verdict.BUSY: f"launch #{verdict.launch_id} yielded to launch "
        f"#{verdict.earlier_launch_id}, another bot on the same chat",
        Verdict.NOT_STORED: "would launch, but no such launch is stored",
        Verdict.STOPPED: f"rule {verdict.stopped_by!r} matched first and has stop: true",
    }.get(verdict.verdict, verdict.reason)
    lines = [head if verdict.failed_conditions else f"{head}: {detail}"]
    for failed in verdict.failed_conditions:
        got = "missing" if failed.got is None else failed.got
        lines.append(f"    {failed.field}: expected {failed.expected}, got {got}")
    hours = verdict.hours
    if hours is not None:
        lines.append(
            f"    local time {hours.local_time:%a %Y-%m-%d %H:%M} {hours.zone}; "
            f"next opening {hours.next_open.astimezone(hours.local_time.tzinfo):%a %Y-%m-%d %H:%M}"
            f" ({hours.next_open:%Y-%m-%d %H:%M}Z)"
        )
    return lines
