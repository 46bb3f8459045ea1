"""One grammar for time: durations, instants and moments "that long ago", each with
the message its caller shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from automation import times
from automation.errors import BadAge
from automation.times import parse_age

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),  # a duration: that long before now
        ("3d", NOW - timedelta(days=3)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("400d", NOW - timedelta(days=400)),  # a log looks back further than a rule waits
        ("2d 3h", NOW - timedelta(days=2, hours=3)),
        ("2024-10-01", datetime(2024, 10, 1, tzinfo=UTC)),  # a date: its midnight, UTC
        ("2024-10-01T09:00:00", datetime(2024, 10, 1, 9, tzinfo=UTC)),  # naive is UTC
        ("2024-10-01T09:00:00+03:00", datetime(2024, 10, 1, 6, tzinfo=UTC)),
    ],
)
def test_parse_moment_takes_durations_before_now_and_iso_times(
    given: str, expected: datetime
) -> None:
    assert times.parse_moment(given, NOW) == expected


@pytest.mark.parametrize("given", ["800000d", "99999999999999d", "9" * 5000 + "s"])
def test_parse_moment_says_a_duration_reaching_before_the_calendar_is_too_long(
    given: str,
) -> None:
    with pytest.raises(ValueError, match="a duration back from now must end after the year 1"):
        times.parse_moment(given, NOW)


def test_parse_moment_rejects_anything_else_naming_both_forms() -> None:
    with pytest.raises(ValueError) as caught:
        times.parse_moment("yesterday", NOW)

    assert str(caught.value) == (
        "expected a duration such as '2h' or '3d', or an ISO 8601 date or time such as "
        "'2024-10-01' or '2024-10-01T09:00:00+03:00', got 'yesterday'"
    )


@pytest.mark.parametrize(
    ("text", "age"),
    [("30d", 30 * DAY), ("12h", timedelta(hours=12)), (" 400d ", 400 * DAY)],
)
def test_parse_age_reads_days_or_hours(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["30", "0d", "1w", "-1d", "30 d", ""])
def test_parse_age_refuses_anything_else_with_the_expected_form(text: str) -> None:
    with pytest.raises(BadAge) as raised:
        parse_age(text)

    assert str(raised.value) == (
        f"expected an age such as '30d' (days) or '12h' (hours), got {text!r}"
    )


@pytest.mark.parametrize(
    ("delta", "shown"),
    [(3 * DAY + timedelta(hours=5), "3d"), (timedelta(minutes=90), "1h"), (timedelta(0), "0s")],
)
def test_an_age_shows_its_largest_whole_unit(delta: timedelta, shown: str) -> None:
    assert times.format_age(delta) == shown


def test_a_duration_formats_back_to_what_parses_to_it() -> None:
    for text in ("30s", "10m", "1h30m", "7d", "1d2h3m4s"):
        assert times.format_duration(times.parse_duration(text)) == text


def test_the_api_clamps_a_time_at_the_calendars_edge_and_refuses_five_digit_counts() -> None:
    assert times.parse_api_moment("0001-01-01T00:00:00+05:00", NOW) == datetime.min.replace(
        tzinfo=UTC
    )
    with pytest.raises(ValueError, match="a duration ago such as 30m"):
        times.parse_api_moment("10000d", NOW)
