"""What to suggest for a time zone a rules file names that no IANA name matches.

People write what their clocks say: `MSK`, `YEKT`, `UTC+3`, `GMT+5`. Spelling
suggestions would mislead there (`MSK` is two letters from `MST`, US Mountain time,
ten hours away), so abbreviations and offsets are read for what they mean, and a zone
is only suggested when its offset on this machine's time zone data matches what was
written: all year for an offset, in winter or summer for an abbreviation of that
season. Only names that look like places get spelling suggestions.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

#: Common abbreviations → (their UTC offset in minutes, the zone that uses them).
#: Ambiguous ones (IST, CST, BST, AMT) are left out: any guess would mislead someone.
ABBREVIATIONS: Mapping[str, tuple[int, str]] = {
    "KALT": (120, "Europe/Kaliningrad"),
    "MSK": (180, "Europe/Moscow"),
    "SAMT": (240, "Europe/Samara"),
    "YEKT": (300, "Asia/Yekaterinburg"),
    "OMST": (360, "Asia/Omsk"),
    "NOVT": (420, "Asia/Novosibirsk"),
    "KRAT": (420, "Asia/Krasnoyarsk"),
    "IRKT": (480, "Asia/Irkutsk"),
    "YAKT": (540, "Asia/Yakutsk"),
    "VLAT": (600, "Asia/Vladivostok"),
    "MAGT": (660, "Asia/Magadan"),
    "PETT": (720, "Asia/Kamchatka"),
    "ALMT": (300, "Asia/Almaty"),
    "UZT": (300, "Asia/Tashkent"),
    "TJT": (300, "Asia/Dushanbe"),
    "KGT": (360, "Asia/Bishkek"),
    "GET": (240, "Asia/Tbilisi"),
    "AZT": (240, "Asia/Baku"),
    "TRT": (180, "Europe/Istanbul"),
    "GST": (240, "Asia/Dubai"),
    "CEST": (120, "Europe/Berlin"),
    "EEST": (180, "Europe/Helsinki"),
    "PST": (-480, "America/Los_Angeles"),
    "PDT": (-420, "America/Los_Angeles"),
    "MDT": (-360, "America/Denver"),
    "CDT": (-300, "America/Chicago"),
    "EDT": (-240, "America/New_York"),
    "BRT": (-180, "America/Sao_Paulo"),
    "JST": (540, "Asia/Tokyo"),
    "KST": (540, "Asia/Seoul"),
    "SGT": (480, "Asia/Singapore"),
    "HKT": (480, "Asia/Hong_Kong"),
    "AEST": (600, "Australia/Sydney"),
}
#: A place that keeps each of these offsets all year (no daylight saving).
STEADY_PLACES: Mapping[int, str] = {
    -600: "Pacific/Honolulu",
    -300: "America/Bogota",
    -240: "America/Caracas",
    -180: "America/Sao_Paulo",
    60: "Africa/Lagos",
    120: "Europe/Kaliningrad",
    180: "Europe/Moscow",
    210: "Asia/Tehran",
    240: "Europe/Samara",
    270: "Asia/Kabul",
    300: "Asia/Yekaterinburg",
    330: "Asia/Kolkata",
    345: "Asia/Kathmandu",
    360: "Asia/Omsk",
    420: "Asia/Novosibirsk",
    480: "Asia/Irkutsk",
    540: "Asia/Yakutsk",
    600: "Asia/Vladivostok",
    660: "Asia/Magadan",
    720: "Asia/Kamchatka",
}
_OFFSET_RE = re.compile(r"^(?:UTC|GMT)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)
#: Mid-winter and mid-summer: the two offsets a zone with daylight saving has.
_SEASONS = (datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC))


def zone_hint(text: str) -> str:
    """`; did you mean …?` for a time zone that is no IANA name, or nothing."""
    if _OFFSET_RE.match(text.strip()):
        minutes = _offset_minutes(text)
        return "" if minutes is None else _offset_hint(minutes)
    meant = ABBREVIATIONS.get(text.strip().upper())
    if meant is not None:
        minutes, zone = meant
        if minutes in _offsets(zone):
            return f"; did you mean {zone!r}? ({text.strip().upper()} is {_utc(minutes)})"
        return ""
    if re.fullmatch(r"[A-Za-z]{2,5}", text.strip()):
        return ""  # another abbreviation: a look-alike name would be another zone
    return _place_hint(text)


def _offset_minutes(text: str) -> int | None:
    """`UTC+3`, `GMT+05:30`, `+3` → minutes east of UTC; None beyond what clocks use."""
    found = _OFFSET_RE.match(text.strip())
    if found is None:
        return None
    sign, hours, minutes = found[1], int(found[2]), int(found[3] or 0)
    if hours > 14 or minutes >= 60:
        return None
    return (hours * 60 + minutes) * (-1 if sign == "-" else 1)


def _offset_hint(minutes: int) -> str:
    """A place that keeps this offset all year, and the fixed `Etc/GMT` zone if any."""
    choices = []
    place = STEADY_PLACES.get(minutes)
    if place is not None and _offsets(place) == {minutes}:
        choices.append(place)
    fixed = f"Etc/GMT{-minutes // 60:+d}"
    if minutes % 60 == 0 and minutes != 0 and fixed in _zones():
        # IANA's Etc zones are POSIX-style: `Etc/GMT-3` is three hours *ahead* of UTC.
        choices.append(fixed)
    if minutes == 0:
        choices.append("UTC")
    if not choices:
        return ""
    named = " or ".join(repr(choice) for choice in choices)
    return f"; did you mean {named}? ({_utc(minutes)} all year)"


def _place_hint(text: str) -> str:
    """The zone of a city written without its region (`Moscow`), or a close spelling."""
    city = text.strip().replace(" ", "_").casefold()
    for zone in sorted(_zones()):
        if zone.rsplit("/", 1)[-1].casefold() == city:
            return f"; did you mean {zone!r}?"
    close = difflib.get_close_matches(text, sorted(_zones()), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _offsets(zone: str) -> set[int]:
    """The UTC offsets (minutes) `zone` has in winter and summer on this machine."""
    try:
        info = ZoneInfo(zone)
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        return set()
    return {_minutes(moment.astimezone(info).utcoffset()) for moment in _SEASONS}


def _minutes(offset: timedelta | None) -> int:
    return int((offset or timedelta(0)).total_seconds() // 60)


def _utc(minutes: int) -> str:
    """180 → `UTC+3`, 330 → `UTC+5:30`, -240 → `UTC-4`."""
    hours, rest = divmod(abs(minutes), 60)
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())
