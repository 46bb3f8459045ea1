"""One grammar for time: durations, instants and moments "that long ago".

- A duration is `30s`, `10m`, `24h`, `7d` or a combination such as `1h30m`: units d, h,
  m, s in that order, each at most once, so `30m1h` (more often a typo than a wish) is
  refused rather than guessed, and a bare number is refused too (nobody can tell whether
  `cooldown: 24` means hours or seconds).
- An instant is ISO 8601; one without an offset is UTC.
- A moment is either: an instant, or a duration back from now (`--since 2h`).

The rules file, the CLI's time options, the read API's `since`/`until` and retention
ages all read time through these functions, each with the strictness its users were
promised (the API publishes its patterns in the OpenAPI document). Every `parse_*`
raises `ValueError` with the message its caller shows. Pure: the standard library only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from zoneinfo import ZoneInfo

from automation.errors import BadAge

#: Seconds per unit, in the order a duration writes them.
UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
#: The longest duration a rule may wait (`cooldown`, `delay`): a year.
MAX_RULE_DURATION = timedelta(days=365)
#: The read API's counts: at most 4 digits a unit, so the moment stays in the calendar.
API_DIGITS = "[0-9]{1,4}"
#: RFC 3339, the `date-time` of JSON Schema: an offset is required.
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UTC_MIN = datetime.min.replace(tzinfo=UTC)
_UTC_MAX = datetime.max.replace(tzinfo=UTC)


# ------------------------------------------------------------------------- durations


@cache
def _grammar(units: str, digits: str) -> re.Pattern[str]:
    """`units` in this order, each at most once, each count matching `digits`."""
    return re.compile("".join(f"(?:({digits}){unit})?" for unit in units))


def duration_pattern(digits: str = r"\d+") -> str:
    """The duration grammar as an anchored regular expression (for JSON Schema)."""
    return f"^{_grammar('dhms', digits).pattern}$"


#: `since=2h` in the read API.
RELATIVE_PATTERN = duration_pattern(API_DIGITS)


def duration_seconds(text: str, *, units: str = "dhms", digits: str = r"\d+") -> int | None:
    """The seconds `text` spells as a duration, None when it is not one (or is empty).

    Raises `ValueError` for a count of thousands of digits, which `int` refuses.
    """
    match = _grammar(units, digits).fullmatch(text) if text else None
    if match is None:
        return None
    return sum(
        int(count or 0) * UNITS[unit] for count, unit in zip(match.groups(), units, strict=True)
    )


def parse_duration(text: object) -> timedelta:
    """A rules file's duration (`1h30m`, spaces allowed) → a timedelta of at most a year."""
    seconds = duration_seconds(text.replace(" ", "")) if isinstance(text, str) else None
    if seconds is None:
        raise ValueError(
            f"must be a duration such as '30s', '10m', '24h', '7d' or '1h30m', got {text!r}"
        )
    if seconds > MAX_RULE_DURATION.total_seconds():
        raise ValueError(f"must be at most 365d, got {text!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration`: `timedelta(minutes=90)` → `1h30m`."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def format_age(delta: timedelta) -> str:
    """How long ago, in its largest whole unit: `3d`, `5h`, `12m`, `40s`."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in UNITS.items():
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return "0s"


def parse_age(text: str) -> timedelta:
    """A retention age, `30d` or `12h` (one unit, above zero, no year cap); raises
    `BadAge`. Not `parse_duration`: that one stops at a year, and a retention may not."""
    compact = text.strip()
    seconds = duration_seconds(compact, units="d") or duration_seconds(compact, units="h")
    if not seconds:
        raise BadAge(f"expected an age such as '30d' (days) or '12h' (hours), got {text!r}")
    return timedelta(seconds=seconds)


# -------------------------------------------------------------------------- instants


def as_utc(moment: datetime, *, clamp: bool = False) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already.

    At the calendar's ends (`0001-01-01T00:00:00+05:00`) there is no UTC equivalent:
    `OverflowError`, or with `clamp` the calendar's first or last moment.
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        if not clamp:
            raise
        return _UTC_MIN if moment.year == 1 else _UTC_MAX


def parse_instant(text: object) -> datetime:
    """An ISO 8601 moment → an aware UTC datetime; a moment without offset is UTC."""
    try:
        if isinstance(text, str):
            return as_utc(datetime.fromisoformat(text.strip()))
    except (ValueError, OverflowError):
        # OverflowError: a moment at the edge of the calendar (year 1 with a positive
        # offset) has no UTC equivalent; it is "not a time" like any other bad value.
        pass
    raise ValueError(f"must be an ISO 8601 time such as '2024-10-01T09:00:00+03:00', got {text!r}")


def format_instant(moment: datetime) -> str:
    """A moment as messages show it: ISO 8601 in UTC."""
    return moment.astimezone(UTC).isoformat()


def format_when(moment: datetime | None, zone: tzinfo = UTC) -> str:
    """A moment as tables show it: `2024-10-01 09:00:00Z` in UTC, with its offset in
    another zone (`2024-10-01 12:00:00+03:00`), or `-` for none. Naive means UTC."""
    if moment is None:
        return "-"
    local = as_utc(moment).astimezone(zone)
    if zone is UTC:
        return f"{local:%Y-%m-%d %H:%M:%S}Z"
    return f"{local:%Y-%m-%d %H:%M:%S}{_offset(local)}"


def display_zone(name: str) -> tzinfo:
    """The zone times are shown in (DISPLAY_TIMEZONE, `--tz`): UTC itself for `UTC`, so
    that times keep their `Z`. The name is checked where it is read (settings, option)."""
    return UTC if name in {"UTC", "Etc/UTC"} else ZoneInfo(name)


def _offset(local: datetime) -> str:
    """`+03:00`: the zone's offset at that moment, as ISO 8601 writes it."""
    text = local.strftime("%z")
    return f"{text[:3]}:{text[3:5]}"


# --------------------------------------------------------------------------- moments


def _ago(now: datetime, seconds: int, text: str) -> datetime:
    """`now` minus `seconds`, or the real reason it has no answer."""
    try:
        return now - timedelta(seconds=seconds)
    except OverflowError:
        raise _before_the_calendar(text) from None


def _before_the_calendar(text: str) -> ValueError:
    return ValueError(f"a duration back from now must end after the year 1, got {text!r}")


def parse_moment(text: str, now: datetime) -> datetime:
    """A CLI time option: `2h`, `3d` (that long before `now`, spaces allowed, no cap:
    a log kept for years is looked back at further than a rule waits) or an ISO 8601
    date or time (naive is UTC)."""
    try:
        seconds = duration_seconds(text.replace(" ", ""))
    except ValueError:  # int() of thousands of digits: long before the year 1
        raise _before_the_calendar(text) from None
    if seconds is not None:
        return _ago(now, seconds, text)
    try:
        return parse_instant(text)
    except ValueError:
        raise ValueError(
            f"expected a duration such as '2h' or '3d', or an ISO 8601 date or time "
            f"such as '2024-10-01' or '2024-10-01T09:00:00+03:00', got {text!r}"
        ) from None


def parse_api_moment(text: str, now: datetime) -> datetime:
    """The read API's `since`/`until`, as its OpenAPI document publishes them: an RFC 3339
    time (offset required), a date (midnight UTC) or a duration ago (`2h`, `3d`,
    `1h30m`, at most 4 digits a unit). Times at the calendar's ends are clamped."""
    seconds = duration_seconds(text, digits=API_DIGITS)
    if seconds is not None:
        return _ago(now, seconds, text)
    if _RFC3339.fullmatch(text) or _DATE.fullmatch(text):
        try:
            return as_utc(datetime.fromisoformat(text.upper()), clamp=True)
        except ValueError:
            pass
    raise ValueError(
        "expected a time with its offset such as 2024-10-01T09:00:00+03:00, a date such "
        f"as 2024-10-01 or a duration ago such as 30m, 2h or 3d, got {text!r}"
    )
