"""Why a rule did or did not launch on an event, as data.

`Rule.decide` attaches a `Why` to each `Decision`: an outcome from a fixed list and
the facts behind it (the first failed condition, the entity the event lacked, the
local time outside active hours and the next opening, the rule whose `stop: true`
hid the event). `rules test` prints the decision's words; `deliveries show`, the API
and the console read these fields and add what only the database knows (the launch,
a cooldown's earlier launch, a duplicate).

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from automation.rules.hours import ActiveHours
from automation.rules.matchers import Failure


class Outcome(enum.StrEnum):
    """What one rule made of one event."""

    #: Matched and planned a launch (maybe delayed, maybe after active hours open).
    LAUNCH = "launch"
    #: A `when:` condition failed (`Why.failure`; `Condition.failures` lists all).
    CONDITIONS_FAILED = "conditions_failed"
    #: `enabled: false`.
    DISABLED = "disabled"
    #: An outgoing message, and the rule does not ask for a message `type`.
    OUTGOING_MESSAGE = "outgoing_message"
    #: The event's data has a shape the conditions cannot read.
    UNREADABLE = "unreadable"
    #: Matched, but the event carries no id of the rule's entity.
    ENTITY_MISSING = "entity_missing"
    #: Matched outside active hours with `outside_hours: skip`.
    OUTSIDE_HOURS = "outside_hours"
    #: Matched, but the start time falls outside the calendar.
    OUTSIDE_CALENDAR = "outside_calendar"
    #: Not considered: an earlier rule matched and has `stop: true`.
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class HoursCheck:
    """An event that came outside active hours: when, in the window's zone, and when
    the rule may launch next."""

    zone: str
    #: The moment the launch was due, as wall-clock time in `zone`.
    local_time: datetime
    #: The next opening of any window (UTC).
    next_open: datetime

    @classmethod
    def of(cls, hours: ActiveHours, due: datetime, next_open: datetime) -> HoursCheck:
        """Shown in the zone of the first window: the one a rules file names first."""
        zone = hours.windows[0].zone
        return cls(zone.key, due.astimezone(zone), next_open)


@dataclass(frozen=True, slots=True)
class Why:
    """The outcome and the one fact that explains it (the others stay None)."""

    outcome: Outcome
    failure: Failure | None = None
    #: ENTITY_MISSING: the rule's entity, and the entities the event carries.
    entity: str | None = None
    carried: tuple[str, ...] = ()
    #: OUTSIDE_HOURS, or a LAUNCH scheduled for when active hours open.
    hours: HoursCheck | None = None
    #: STOPPED: the earlier rule with `stop: true` that matched.
    stopped_by: str | None = None
