"""One bot per chat: when a launch must yield to another bot's launch on the same chat.

amoCRM runs one Salesbot per chat, and a bot started on a chat where another is still
talking interrupts it (Kommo's support pages: even two bots that both wait for the
customer's reply cut each other off). A customer's first message brings `talk.added`
and `message.added` together, a chat that becomes a lead brings `unsorted.added` and
`lead.added`: rules on different events, each sensible alone, start two bots at once.

So a launch is *busy* when another bot's launch on the same chat is pending or sending,
or was sent (or dry-run, or may have been sent) within the rule's `one_bot_per_chat`.
A busy launch is skipped, or with `if_busy: wait` scheduled after the other's window.

"The same chat" is the entity the bot runs on; where an event names both a lead and a
contact (talks, messages, unsorted) they are one chat, so a bot on the contact makes
the lead busy and the other way round (`Chat`). This module decides (`busy`); the
database part (`store/chatguard.py`) finds the other launches under a lock, so two
webhooks stored at the same instant cannot both see a free chat.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from automation.events.payloads import ENTITY_KINDS, ENTITY_TYPE_CODES
from automation.times import format_duration, format_instant

if TYPE_CHECKING:
    from automation.rules.ruleset import PlannedLaunch

#: The guard when neither the rule nor `defaults` sets `one_bot_per_chat`.
DEFAULT_WINDOW = timedelta(minutes=10)
#: What a busy launch does (`if_busy`); the first is the default.
IF_BUSY = ("skip", "wait")
#: Event families whose events name a chat's lead and its contact together.
CHAT_FAMILIES = frozenset({"talk", "message", "outgoing_message", "unsorted"})
#: Statuses of a launch that holds its chat whatever its age: it is about to run.
HOLDING = frozenset({"pending", "sending"})
#: Statuses of a launch that holds its chat for the window after it ran (or may have).
RAN = frozenset({"sent", "uncertain", "dry_run"})

_LEAD, _CONTACT = ENTITY_TYPE_CODES["lead"], ENTITY_TYPE_CODES["contact"]


@dataclass(frozen=True, slots=True)
class Chat:
    """What a launch occupies: its own entity and, when its event named them, the
    lead and the contact of the chat (a launch on a lead always has `lead_id`)."""

    entity_type: int
    entity_id: int
    lead_id: int | None = None
    contact_id: int | None = None

    @classmethod
    def of(cls, launch: PlannedLaunch) -> Chat:
        """The chat of a planned launch, from the ids its event carries."""
        entities = launch.event.entities if launch.event.family in CHAT_FAMILIES else {}
        lead = entities.get("lead")
        contact = entities.get("contact")
        if launch.entity_type == _LEAD:
            lead = launch.entity_id
        elif launch.entity_type == _CONTACT:
            contact = launch.entity_id
        return cls(launch.entity_type, launch.entity_id, lead, contact)

    def shared(self, other: Chat) -> str | None:
        """The entity both occupy (`contact 93589657`), or None for different chats;
        this chat's own entity first, when that is the one shared."""
        if (self.entity_type, self.entity_id) == (other.entity_type, other.entity_id):
            return f"{ENTITY_KINDS.get(self.entity_type, self.entity_type)} {self.entity_id}"
        shared = [
            (kind, mine)
            for kind, mine, theirs in (
                ("lead", self.lead_id, other.lead_id),
                ("contact", self.contact_id, other.contact_id),
            )
            if mine is not None and mine == theirs
        ]
        own = ENTITY_KINDS.get(self.entity_type)
        shared.sort(key=lambda pair: pair[0] != own)
        return f"{shared[0][0]} {shared[0][1]}" if shared else None

    def lock_names(self) -> list[str]:
        """One name per entity this chat covers: two chats that share an entity share a
        name, so locking every name serialises every pair that could collide."""
        names = {f"{self.entity_type}:{self.entity_id}"}
        if self.lead_id is not None:
            names.add(f"{_LEAD}:{self.lead_id}")
        if self.contact_id is not None:
            names.add(f"{_CONTACT}:{self.contact_id}")
        return sorted(names)


@dataclass(frozen=True, slots=True)
class Occupant:
    """Another launch on (maybe) the same chat, as the guard sees it.

    `started` is when it ran (`sent`, `uncertain`, `dry_run`), or when it is due to
    (`pending`, `sending`). `id` is None for a launch only planned (`rules test`).
    """

    id: int | None
    rule: str
    bot_id: int
    status: str
    started: datetime
    chat: Chat

    def describe(self) -> str:
        """`launch #12 of bot 102 (rule 'greeting')`, or the planned launch of a rule."""
        name = f"launch #{self.id}" if self.id is not None else "the launch"
        return f"{name} of bot {self.bot_id} (rule {self.rule!r})"


@dataclass(frozen=True, slots=True)
class Busy:
    """The guard's decision on a busy launch: data for the launch log and `explain`.

    `action` is `skip` (stored `skipped`) or `wait` (stored `pending`, not before
    `not_before`); `blocker` is the launch it yields to or waits for.
    """

    action: str
    blocker: Occupant
    not_before: datetime
    reason: str


def busy(
    launch: PlannedLaunch, chat: Chat, others: Iterable[Occupant], now: datetime
) -> Busy | None:
    """Whether `launch` (on `chat`) must yield, given the other launches near its chat.

    None when the rule's guard is off, or no other bot holds the chat. Among several
    holders it yields to the one whose window ends last, so a `wait` launch waits long
    enough for all of them.
    """
    window = launch.one_bot_per_chat
    if not window:
        return None
    holders = [o for o in others if _holds(o, launch, chat, window, now)]
    if not holders:
        return None
    blocker = max(holders, key=lambda o: (_window_end(o, window, now), -(o.id or 0)))
    end = _window_end(blocker, window, now)
    where = chat.shared(blocker.chat) or "this chat"
    if launch.if_busy == "wait":
        not_before = max(launch.not_before, end)
        reason = (
            f"busy: waits for {blocker.describe()} on {where}, {_state(blocker)}; "
            f"not before {format_instant(not_before)} "
            f"(one_bot_per_chat: {format_duration(window)}, if_busy: wait)"
        )
        return Busy("wait", blocker, not_before, reason)
    reason = (
        f"busy: yielded to {blocker.describe()} on {where}, {_state(blocker)} "
        f"(one_bot_per_chat: {format_duration(window)}, if_busy: skip)"
    )
    return Busy("skip", blocker, launch.not_before, reason)


def _holds(
    other: Occupant, launch: PlannedLaunch, chat: Chat, window: timedelta, now: datetime
) -> bool:
    """Another bot's launch that occupies the chat now (the same bot is the cooldown's)."""
    if other.bot_id == launch.bot_id or chat.shared(other.chat) is None:
        return False
    if other.status in HOLDING:
        return True
    return other.status in RAN and other.started > now - window


def _window_end(other: Occupant, window: timedelta, now: datetime) -> datetime:
    """When the chat is free again, as far as `other` is concerned."""
    start = max(other.started, now) if other.status in HOLDING else other.started
    return start + window


def _state(other: Occupant) -> str:
    """`due …`, `being sent`, or `sent at …`: where the other launch is."""
    if other.status == "pending":
        return f"due {format_instant(other.started)}"
    if other.status == "sending":
        return "being sent"
    return f"{other.status} at {format_instant(other.started)}"


class PlannedChats:
    """The guard without a database: launches judged in order, each against the ones
    judged before (what `rules test` shows for payloads given together)."""

    def __init__(self) -> None:
        self.held: list[Occupant] = []

    def judge(
        self, launches: Sequence[PlannedLaunch], now: datetime
    ) -> list[tuple[PlannedLaunch, Busy | None]]:
        """Each launch with the guard's decision; those not skipped hold their chat."""
        decided: list[tuple[PlannedLaunch, Busy | None]] = []
        for launch in launches:
            chat = Chat.of(launch)
            decision = busy(launch, chat, self.held, now)
            decided.append((launch, decision))
            if decision is None or decision.action == "wait":
                start = decision.not_before if decision else launch.not_before
                self.held.append(Occupant(None, launch.rule, launch.bot_id, "pending", start, chat))
        return decided


def guard_planned(
    launches: Sequence[PlannedLaunch], now: datetime
) -> list[tuple[PlannedLaunch, Busy | None]]:
    """The guard over one delivery's launches alone, in order (earlier ones win)."""
    return PlannedChats().judge(launches, now)


def launches_after_guard(launches: Sequence[PlannedLaunch], now: datetime) -> list[PlannedLaunch]:
    """The launches of one delivery that would start: busy `skip` ones dropped, busy
    `wait` ones moved to their new start."""
    return [
        launch if decision is None else replace(launch, not_before=decision.not_before)
        for launch, decision in guard_planned(launches, now)
        if decision is None or decision.action == "wait"
    ]
