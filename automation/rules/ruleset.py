"""Compiled rules and matching: which launches one event makes, and why.

A `RuleSet` indexes its rules by concrete event type, so an event only meets the
rules that listen to its type; `match` and `explain` are pure functions of (event,
now). `conflicts` finds rules that can start two bots in one chat at once.
Rules are built from a file by `rules.load_rules`.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from automation.events.payloads import ENTITY_TYPE_CODES, EVENT_TYPES, Event
from automation.rules.conditions import Condition
from automation.rules.conflicts import conflicts as find_conflicts
from automation.rules.hours import ActiveHours
from automation.rules.verdicts import HoursCheck, Outcome, Why
from automation.times import as_utc, format_duration, format_instant

logger = logging.getLogger("automation.rules")

#: The moments rules can be matched at. A rule adds its delay (up to a year) and the
#: search for active hours (a week either side) to the moment, and Python's calendar
#: runs from year 1 to 9999: past these bounds that arithmetic overflows.
EARLIEST_MOMENT = datetime(2, 1, 1, tzinfo=UTC)
LATEST_MOMENT = datetime(9998, 1, 1, tzinfo=UTC)


def check_moment(moment: datetime) -> datetime:
    """`moment` as aware UTC, if rules can be matched at it; else a `ValueError` that
    says the bounds (for `rules test --at` and a cases file's `at:`)."""
    utc = as_utc(moment)
    if EARLIEST_MOMENT <= utc < LATEST_MOMENT:
        return utc
    raise ValueError(
        f"must be between {EARLIEST_MOMENT.date().isoformat()} and "
        f"{LATEST_MOMENT.date().isoformat()} (a rule's delay and active hours are added "
        f"to it), got {format_instant(utc)}"
    )


@dataclass(frozen=True)
class PlannedLaunch:
    """One bot to start on one entity, not before a moment (UTC)."""

    rule: str
    bot_id: int
    entity: str
    entity_type: int
    entity_id: int
    event: Event
    not_before: datetime
    cooldown: timedelta | None
    #: The rule's guard (`one_bot_per_chat`); None or zero when it is off.
    one_bot_per_chat: timedelta | None = None
    #: What the launch does when another bot holds its chat: `skip` or `wait`.
    if_busy: str = "skip"

    @property
    def dedupe_key(self) -> str:
        """Same rule, bot, entity and change → same key, whichever delivery carried it."""
        return f"{self.rule}|{self.bot_id}|{self.entity_type}|{self.entity_id}|{self.event.change}"


@dataclass(frozen=True)
class Decision:
    """What one rule made of one event: matched or why not, and the launch if any.

    `matched` means the rule's `on` and `when` accepted the event; a matched rule
    can still yield no launch (the event lacks the entity, or it is outside active
    hours with `outside_hours: skip`), and `reason` then says so. `why` is the same
    as data (`verdicts.Why`).
    """

    rule: str
    matched: bool
    reason: str
    launch: PlannedLaunch | None
    why: Why = field(default=Why(Outcome.LAUNCH), compare=False)


def _is_echo(event: Event) -> bool:
    """Outgoing `message.added`: answering it would make a bot talk to itself."""
    return event.type == "message.added" and event.data.get("type") != "incoming"


_DISABLED = Why(Outcome.DISABLED)
_OUTGOING = Why(Outcome.OUTGOING_MESSAGE)
_UNREADABLE = Why(Outcome.UNREADABLE)


def _words(why: Why, event: Event) -> str:
    """A reason a rule did not match, as `rules test` prints it."""
    if why.failure is not None:
        return str(why.failure)
    if why.outcome is Outcome.DISABLED:
        return "disabled (enabled: false)"
    if why.outcome is Outcome.OUTGOING_MESSAGE:
        kind = event.data.get("type")
        return f"message type is {kind!r}; without a 'type' condition only incoming match"
    return "the event's data has a shape this rule's conditions cannot read"


@dataclass(frozen=True, eq=False)
class Rule:
    """A compiled rule, defaults already applied."""

    name: str
    on: tuple[str, ...]
    event_types: frozenset[str]
    bot_id: int
    entity: str
    condition: Condition
    cooldown: timedelta | None = None
    delay: timedelta = timedelta(0)
    active_hours: ActiveHours | None = None
    outside_hours: str = "schedule"
    one_bot_per_chat: timedelta | None = None
    if_busy: str = "skip"
    enabled: bool = True
    stop: bool = False
    #: The rule's `when:` in one line, for people (the console's rules page).
    when: str = ""

    @property
    def entity_type(self) -> int:
        """The salesbot API's code for `entity` (lead 2, contact 1, …)."""
        return ENTITY_TYPE_CODES[self.entity]

    def decide(self, event: Event, now: datetime) -> Decision:
        """Match one event of a type this rule listens to, at `now` (aware UTC)."""
        why = self.why_not(event)
        if why is not None:
            return Decision(self.name, False, _words(why, event), None, why)
        return self._launch(event, now)

    def why_not(self, event: Event) -> Why | None:
        """None when the rule accepts the event, else the reason it does not."""
        if not self.enabled:
            return _DISABLED
        if _is_echo(event) and not self.condition.names_type:
            return _OUTGOING
        try:
            failure = self.condition.check(event)
        except Exception:  # a payload shape no test foresaw: no match, never a 500
            logger.exception("rule %r could not judge a %s event", self.name, event.type)
            return _UNREADABLE
        return None if failure is None else Why(Outcome.CONDITIONS_FAILED, failure)

    def _launch(self, event: Event, now: datetime) -> Decision:
        entity_id = event.entities.get(self.entity)
        if entity_id is None:
            carried = ", ".join(event.entities) or "none"
            reason = f"matched, but the event carries no {self.entity} id (it has: {carried})"
            why = Why(Outcome.ENTITY_MISSING, entity=self.entity, carried=tuple(event.entities))
            return Decision(self.name, True, reason, None, why)
        try:
            due = now + self.delay
            not_before = self.active_hours.next_open(due) if self.active_hours else due
        except OverflowError:  # `check_moment` keeps callers away; never a traceback
            reason = "matched, but its start time falls outside the calendar (years 1-9999)"
            return Decision(self.name, True, reason, None, Why(Outcome.OUTSIDE_CALENDAR))
        hours = None
        if not_before != due and self.active_hours is not None:
            hours = HoursCheck.of(self.active_hours, due, not_before)
        if hours is not None and self.outside_hours == "skip":
            reason = (
                f"matched, but {format_instant(due)} is outside active hours (outside_hours: skip)"
            )
            return Decision(self.name, True, reason, None, Why(Outcome.OUTSIDE_HOURS, hours=hours))
        launch = PlannedLaunch(
            self.name,
            self.bot_id,
            self.entity,
            self.entity_type,
            entity_id,
            event,
            not_before,
            self.cooldown,
            self.one_bot_per_chat,
            self.if_busy,
        )
        reason = self._matched_reason(due, not_before)
        return Decision(self.name, True, reason, launch, Why(Outcome.LAUNCH, hours=hours))

    def _matched_reason(self, due: datetime, not_before: datetime) -> str:
        parts = ["matched"]
        if self.delay:
            parts.append(f"delayed {format_duration(self.delay)}")
        if not_before != due:
            parts.append(f"outside active hours, scheduled for {format_instant(not_before)}")
        return "; ".join(parts)

    def exact_for(self, event_type: str) -> Mapping[str, frozenset[Hashable]]:
        """Values top-level fields must take, with the implicit incoming-only filter."""
        if event_type == "message.added" and not self.condition.names_type:
            return {**self.condition.exact, "type": frozenset({"incoming"})}
        return self.condition.exact


class RuleSet:
    """The compiled rules of one file, indexed by event type. Immutable; share freely."""

    def __init__(
        self,
        rules: Sequence[Rule],
        content_hash: str = "",
        filename: str = "rules.yaml",
        warnings: Sequence[str] = (),
        source: str = "",
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.content_hash = content_hash
        self.filename = filename
        #: What loading found doubtful but not wrong (`file:line:col: …` each), such
        #: as a condition field no event of the rule is known to carry.
        self.warnings: tuple[str, ...] = tuple(warnings)
        #: The file's text, kept so a server can store the version it judges with.
        self.source = source
        index: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for event_type in sorted(rule.event_types):
                index.setdefault(event_type, []).append(rule)
        self._index: dict[str, tuple[Rule, ...]] = {k: tuple(v) for k, v in index.items()}
        self._position = {rule.name: position for position, rule in enumerate(self.rules)}

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, event: Event, now: datetime) -> list[PlannedLaunch]:
        """Launches for one event at `now` (naive means UTC), in rule order."""
        return [d.launch for d in self.explain(event, now) if d.launch is not None]

    def plan(self, events: Iterable[Event], now: datetime) -> list[PlannedLaunch]:
        """Launches for all events of one delivery, rules in file order first.

        The order is the order they are stored in, and so the order the one-bot-per-
        chat guard judges them in: within one delivery the rule earlier in the file
        wins, whichever event the body lists first.
        """
        launches = [launch for event in events for launch in self.match(event, now)]
        return sorted(launches, key=lambda launch: self._position.get(launch.rule, 0))

    def explain(self, event: Event, now: datetime) -> list[Decision]:
        """One decision per rule listening to the event's type, in file order.

        Every matching rule fires, except that a matching rule with `stop: true`
        hides the event from the rules after it.
        """
        moment = as_utc(now)
        decisions = []
        stopper: str | None = None
        for rule in self._index.get(event.type, ()):
            if stopper is not None:
                reason = f"not considered: rule {stopper!r} matched first and has stop: true"
                why = Why(Outcome.STOPPED, stopped_by=stopper)
                decisions.append(Decision(rule.name, False, reason, None, why))
                continue
            decision = rule.decide(event, moment)
            decisions.append(decision)
            if decision.matched and rule.stop:
                stopper = rule.name
        return decisions

    def event_types(self) -> set[str]:
        """Concrete event types at least one enabled rule listens to."""
        return {t for rule in self.rules if rule.enabled for t in rule.event_types}

    def summary(self) -> dict[str, int]:
        """Enabled rules per event type, in `EVENT_TYPES` order."""
        counts = {t: sum(r.enabled for r in self._index.get(t, ())) for t in EVENT_TYPES}
        return {event_type: count for event_type, count in counts.items() if count}

    def conflicts(self) -> list[str]:
        """Pairs of rules that can start two bots in one chat at once, which the
        one-bot-per-chat guard does not keep apart (see `rules/conflicts.py`)."""
        return find_conflicts(self.rules)
