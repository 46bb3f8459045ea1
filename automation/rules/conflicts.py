"""`rules check` warnings: pairs of rules that start two bots in one chat at once.

amoCRM runs one Salesbot per chat; a second bot interrupts the first. Two rules
collide when they can fire for the same event, or for events amoCRM sends together
for one change (`TOGETHER`), and their launches land in the same chat: the same
entity, or the lead and the contact of a chat when an event names both.

The one-bot-per-chat guard resolves such a pair at run time, and a pair it resolves is
no warning: for one event the launches are judged in file order, so the later rule's
guard must be on; for events that arrive separately either may come first, so both
rules' guards must be. Each warning says which setting is missing.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from automation.rules.chat import CHAT_FAMILIES

if TYPE_CHECKING:
    from automation.rules.ruleset import Rule

#: Event types amoCRM sends for one change, in one body or in separate webhooks: a
#: customer's first message opens a talk; a chat or form becomes a lead; a lead moved
#: to another stage is updated too.
TOGETHER: tuple[frozenset[str], ...] = (
    frozenset({"talk.added", "message.added"}),
    frozenset({"unsorted.added", "lead.added"}),
    frozenset({"lead.updated", "lead.status_changed"}),
)


@dataclass(frozen=True)
class Occasion:
    """Two event types (the same one, or two sent together) that fire both rules."""

    first: str
    second: str

    @property
    def one_event(self) -> bool:
        return self.first == self.second

    def describe(self) -> str:
        if self.one_event:
            return self.first
        return f"{self.first} + {self.second} (sent together)"


def conflicts(rules: Sequence[Rule]) -> list[str]:
    """One warning per pair of enabled rules that can start two bots in one chat at
    once and that the guard does not keep apart, in file order."""
    enabled = [rule for rule in rules if rule.enabled]
    found = []
    for i, first in enumerate(enabled):
        for second in enabled[i + 1 :]:
            if first.bot_id == second.bot_id:
                continue  # the cooldown and de-duplication deal with one bot
            occasions = list(_occasions(first, second))
            off = _unguarded(first, second, occasions)
            if occasions and off:
                found.append(_warning(first, second, occasions, off))
    return found


def _occasions(first: Rule, second: Rule) -> Iterator[Occasion]:
    for one in sorted(first.event_types):
        for other in sorted(second.event_types):
            if (
                _together(one, other)
                and _same_chat(first, one, second, other)
                and _both_fire(first, one, second, other)
            ):
                yield Occasion(one, other)


def _together(one: str, other: str) -> bool:
    return one == other or frozenset({one, other}) in TOGETHER


def _same_chat(first: Rule, one: str, second: Rule, other: str) -> bool:
    """Same entity; or a lead and a contact that an event of the pair names together."""
    if first.entity == second.entity:
        return True
    names_both = {one.split(".")[0], other.split(".")[0]} & CHAT_FAMILIES
    return {first.entity, second.entity} == {"lead", "contact"} and bool(names_both)


def _both_fire(first: Rule, one: str, second: Rule, other: str) -> bool:
    """False when the rules cannot fire together: one event that the first stops, or
    exact conditions that exclude each other; a customer's first message is incoming."""
    if one == other:
        if first.stop:
            return False
        mine, theirs = first.exact_for(one), second.exact_for(other)
        return not any(mine[key].isdisjoint(theirs[key]) for key in mine.keys() & theirs.keys())
    for rule, event_type in ((first, one), (second, other)):
        if event_type == "message.added":
            kinds = rule.exact_for(event_type).get("type", frozenset({"incoming"}))
            if "incoming" not in kinds:
                return False
    return True


def _unguarded(first: Rule, second: Rule, occasions: list[Occasion]) -> list[Rule]:
    """The rules whose guard must be on, and is not, for every occasion to resolve."""
    needed = [second]
    if any(not occasion.one_event for occasion in occasions):
        needed = [first, second]
    return [rule for rule in needed if not rule.one_bot_per_chat]


def _warning(first: Rule, second: Rule, occasions: list[Occasion], off: list[Rule]) -> str:
    names = " and ".join(repr(rule.name) for rule in off)
    where = (
        f"on the same {first.entity}"
        if first.entity == second.entity
        else f"in one chat ({first.entity} and {second.entity} of the same chat)"
    )
    events = ", ".join(occasion.describe() for occasion in occasions)
    text = (
        f"rules {first.name!r} (bot {first.bot_id}) and {second.name!r} (bot {second.bot_id}) "
        f"can both start {where} for {events}; the second bot interrupts the first. "
        f"one_bot_per_chat is 0s on {names}: set it (e.g. 10m) to make the later one "
        f"yield (if_busy: skip) or wait (if_busy: wait)"
    )
    if all(occasion.one_event for occasion in occasions):
        text += f"; or make their conditions exclusive, or add stop: true to {first.name!r}"
    return text
