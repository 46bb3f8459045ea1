"""Active hours as rules files write them: time zones, days and times of day.

The `parse_*` functions read what a file says (a time zone, `mon-fri`, `09:00`) and
raise `ValueError` with the message the file's error shows; `ActiveHours` answers when
a rule may launch next. Durations and instants are `automation.times`' grammar.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from automation.rules.yamlfile import did_you_mean, show
from automation.rules.zones import zone_hint

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


# ----------------------------------------------------------- zones, days, times of day


def parse_timezone(value: Any) -> str:
    """An IANA time zone name this machine knows (`Europe/Moscow`), unchanged; else an
    error suggesting what `MSK` or `UTC+3` means (`zones.zone_hint`)."""
    try:
        if isinstance(value, str) and value:
            ZoneInfo(value)
            return value
    except (ZoneInfoNotFoundError, ValueError):
        pass
    hint = zone_hint(value) if isinstance(value, str) else ""
    raise ValueError(f"unknown time zone {show(value)}{hint}")


def parse_days(value: Any) -> frozenset[int]:
    """`[mon, tue]`, `mon-fri`, `[mon-fri, sat]` → weekday numbers (Monday is 0)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"must be a list of days such as [mon-fri, sat], got {show(value)}")
    days: set[int] = set()
    for item in items:
        days.update(_day_range(item))
    return frozenset(days)


def _day_range(item: Any) -> list[int]:
    first, _, last = str(item).partition("-") if isinstance(item, str) else ("", "", "")
    start = _day(first.strip(), item)
    end = _day(last.strip(), item) if last else start
    return [(start + offset) % 7 for offset in range((end - start) % 7 + 1)]


def _day(name: str, item: Any) -> int:
    key = name.lower()
    if key in _DAYS:
        return _DAYS.index(key)
    if key in FULL_DAYS:
        return FULL_DAYS.index(key)
    raise ValueError(f"unknown day {show(item)}{did_you_mean(key, _DAYS + FULL_DAYS)}")


def parse_clock(value: Any, *, end: bool = False) -> int:
    """`"09:30"` → minutes after midnight; `"24:00"` is allowed as an end."""
    found = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if isinstance(value, str) else None
    minutes = int(found[1]) * 60 + int(found[2]) if found and int(found[2]) < 60 else -1
    if not 0 <= minutes < 1440 + (1 if end else 0):
        raise ValueError(f"must be a time of day such as '09:00', got {show(value)}")
    return minutes


def parse_clock_end(value: Any) -> int:
    """`parse_clock` for the end of a window, where `"24:00"` is midnight."""
    return parse_clock(value, end=True)


# ------------------------------------------------------------------------ active hours


@dataclass(frozen=True)
class Window:
    """Days of the week and a time range in one time zone.

    A range whose end is not after its start runs overnight: `22:00`–`06:00` on
    Monday is Monday 22:00 to Tuesday 06:00.
    """

    zone: ZoneInfo
    days: frozenset[int]
    start: int  # minutes after midnight
    end: int  # minutes after midnight; 1440 means midnight at the end of the day

    def intervals(self, moment: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals (UTC) that start from the local day before `moment` on."""
        today = moment.astimezone(self.zone).date()
        for offset in range(-1, 8):
            day = today + timedelta(days=offset)
            if day.weekday() in self.days:
                end_day = day + timedelta(days=1) if self.end <= self.start else day
                yield _local(day, self.start, self.zone), _local(end_day, self.end, self.zone)


def _local(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """Wall-clock time `minutes` after local midnight of `day`, as UTC."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    return (midnight + timedelta(minutes=minutes)).astimezone(UTC)


@dataclass(frozen=True)
class ActiveHours:
    """The windows in which a rule may launch; outside them it waits or skips."""

    windows: tuple[Window, ...]

    def next_open(self, moment: datetime) -> datetime:
        """`moment` if a window is open then, else the start of the next window."""
        starts = []
        for window in self.windows:
            for start, end in window.intervals(moment):
                if start <= moment < end:
                    return moment
                if start > moment:
                    starts.append(start)
        return min(starts)
