"""Time zone suggestions (`rules.zones`): by meaning, never a zone at another offset."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from automation.rules.hours import parse_timezone
from automation.rules.zones import ABBREVIATIONS, STEADY_PLACES, zone_hint

SEASONS = (datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC))


def offsets(zone: str) -> set[int]:
    """The UTC offsets of `zone` in winter and summer, in minutes."""
    from zoneinfo import ZoneInfo

    info = ZoneInfo(zone)
    return {int(moment.astimezone(info).utcoffset().total_seconds() // 60) for moment in SEASONS}


def suggested(hint: str) -> list[str]:
    return re.findall(r"'([^']+)'", hint)


def error_of(value: str) -> str:
    with pytest.raises(ValueError) as raised:
        parse_timezone(value)
    return str(raised.value)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("MSK", "unknown time zone 'MSK'; did you mean 'Europe/Moscow'? (MSK is UTC+3)"),
        ("msk", "unknown time zone 'msk'; did you mean 'Europe/Moscow'? (MSK is UTC+3)"),
        (
            "YEKT",
            "unknown time zone 'YEKT'; did you mean 'Asia/Yekaterinburg'? (YEKT is UTC+5)",
        ),
        (
            "UTC+3",
            "unknown time zone 'UTC+3'; did you mean 'Europe/Moscow' or 'Etc/GMT-3'? "
            "(UTC+3 all year)",
        ),
        (
            "GMT+5",
            "unknown time zone 'GMT+5'; did you mean 'Asia/Yekaterinburg' or 'Etc/GMT-5'? "
            "(UTC+5 all year)",
        ),
        (
            "UTC+05:30",
            "unknown time zone 'UTC+05:30'; did you mean 'Asia/Kolkata'? (UTC+5:30 all year)",
        ),
        ("Moscow", "unknown time zone 'Moscow'; did you mean 'Europe/Moscow'?"),
        ("Europe/Moskow", "unknown time zone 'Europe/Moskow'; did you mean 'Europe/Moscow'?"),
        ("MSD", "unknown time zone 'MSD'"),
        ("CST", "unknown time zone 'CST'"),
        ("UTC+15", "unknown time zone 'UTC+15'"),
    ],
)
def test_time_zone_is_suggested_by_what_was_meant(written: str, message: str) -> None:
    assert error_of(written) == message


def test_no_abbreviation_suggests_a_look_alike_at_another_offset() -> None:
    assert "MST" not in error_of("MSK")


@pytest.mark.parametrize(("abbreviation", "meant"), sorted(ABBREVIATIONS.items()))
def test_every_abbreviation_names_a_zone_that_has_its_offset(
    abbreviation: str, meant: tuple[int, str]
) -> None:
    minutes, zone = meant

    assert minutes in offsets(zone)
    assert suggested(zone_hint(abbreviation)) == [zone]


@pytest.mark.parametrize(("minutes", "place"), sorted(STEADY_PLACES.items()))
def test_every_steady_place_keeps_its_offset_all_year(minutes: int, place: str) -> None:
    assert offsets(place) == {minutes}


@given(
    st.integers(min_value=-12, max_value=14),
    st.sampled_from([0, 30, 45]),
    st.sampled_from(["UTC", "GMT", ""]),
)
def test_offset_never_gets_a_zone_at_another_offset(hours: int, minutes: int, prefix: str) -> None:
    total = hours * 60 + (minutes if hours >= 0 else -minutes)
    sign = "-" if total < 0 else "+"
    written = f"{prefix}{sign}{abs(hours)}:{minutes:02d}"

    for zone in suggested(zone_hint(written)):
        assert offsets(zone) == {total}, (written, zone)
