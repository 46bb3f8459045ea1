"""Change keys (`events.changes`): the same change gives the same key, whichever delivery
carries it; different changes give different keys, also without timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest

from automation.events.payloads import Event, decode_body

MORNING = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def short_status(lead_id: str, old: tuple[str, str], new: tuple[str, str]) -> bytes:
    """Digital Pipeline's short status form: ids and stages, no timestamp."""
    (old_pipeline, old_status), (pipeline, status) = old, new
    return urlencode(
        [
            ("leads[status][0][id]", lead_id),
            ("leads[status][0][status_id]", status),
            ("leads[status][0][pipeline_id]", pipeline),
            ("leads[status][0][old_status_id]", old_status),
            ("leads[status][0][old_pipeline_id]", old_pipeline),
            ("account[subdomain]", "mybrand"),
        ]
    ).encode()


def events_of(body: bytes, at: datetime) -> list[Event]:
    return list(decode_body(body, received_at=at).events)


def change_of(body: bytes, at: datetime) -> str:
    [event] = events_of(body, at)
    return event.change


NEW, QUALIFIED, WON = ("7173574", "59936198"), ("7173574", "59936202"), ("7173574", "142")


def test_update_with_an_empty_old_status_is_no_stage_move() -> None:
    body = (
        b"leads[update][0][id]=5&leads[update][0][status_id]=142&leads[update][0][old_status_id]="
    )

    assert [event.type for event in events_of(body, MORNING)] == ["lead.updated"]


def test_update_into_the_same_stage_of_another_pipeline_is_a_stage_move() -> None:
    body = urlencode(
        [
            ("leads[update][0][id]", "5"),
            ("leads[update][0][status_id]", "142"),
            ("leads[update][0][old_status_id]", "142"),
            ("leads[update][0][pipeline_id]", "2"),
            ("leads[update][0][old_pipeline_id]", "1"),
        ]
    ).encode()

    assert [event.type for event in events_of(body, MORNING)] == [
        "lead.updated",
        "lead.status_changed",
    ]


def test_short_status_form_names_the_move_and_the_day() -> None:
    assert change_of(short_status("27754599", NEW, QUALIFIED), MORNING) == (
        "lead:27754599:moved:7173574/59936198>7173574/59936202~2026-12-07"
    )


def test_retry_of_a_short_status_form_hours_later_is_the_same_change() -> None:
    body = short_status("27754599", NEW, QUALIFIED)

    assert change_of(body, MORNING) == change_of(body, MORNING + timedelta(hours=1, minutes=30))


def test_later_move_of_the_same_lead_to_another_stage_is_another_change() -> None:
    first = change_of(short_status("27754599", NEW, QUALIFIED), MORNING)
    later = change_of(short_status("27754599", QUALIFIED, WON), MORNING + timedelta(minutes=5))

    assert first != later


def test_return_to_an_earlier_stage_on_a_later_day_is_another_change() -> None:
    body = short_status("27754599", NEW, QUALIFIED)

    assert change_of(body, MORNING) != change_of(body, MORNING + timedelta(days=1))


def test_same_move_as_short_update_and_short_status_is_the_same_change() -> None:
    pairs = [("status_id", "59936202"), ("old_status_id", "59936198")]
    pairs += [("pipeline_id", "7173574"), ("old_pipeline_id", "7173574")]
    body = urlencode(
        [
            *((f"leads[update][0][{key}]", value) for key, value in [("id", "9"), *pairs]),
            *((f"leads[status][0][{key}]", value) for key, value in [("id", "9"), *pairs]),
        ]
    ).encode()

    assert {event.change for event in events_of(body, MORNING)} == {
        "lead:9:moved:7173574/59936198>7173574/59936202~2026-12-07"
    }


@pytest.mark.parametrize("action", ["delete", "restore"])
def test_delete_or_restore_without_timestamp_is_keyed_by_day(action: str) -> None:
    body = f"leads[{action}][0][id]=27754599".encode()

    today, tomorrow = change_of(body, MORNING), change_of(body, MORNING + timedelta(days=1))

    assert today == f"lead:27754599:{action}~2026-12-07"
    assert tomorrow == f"lead:27754599:{action}~2026-12-08"


def test_responsible_change_without_timestamp_names_old_and_new_user() -> None:
    body = urlencode(
        [
            ("leads[responsible][0][id]", "5"),
            ("leads[responsible][0][responsible_user_id]", "10004031"),
            ("leads[responsible][0][old_responsible_user_id]", "10004026"),
        ]
    ).encode()

    assert change_of(body, MORNING) == "lead:5:responsible:10004026>10004031~2026-12-07"


def test_changes_with_timestamps_keep_their_keys_whatever_the_day() -> None:
    body = b"leads[status][0][id]=5&leads[status][0][status_id]=142&leads[status][0][updated_at]=7"

    assert change_of(body, MORNING) == "lead:5@7:s142"
    assert change_of(body, MORNING + timedelta(days=30)) == "lead:5@7:s142"


def test_talk_updates_at_different_times_are_different_changes() -> None:
    first = b"talk[update][0][talk_id]=106564&talk[update][0][updated_at]=1727702000"
    second = b"talk[update][0][talk_id]=106564&talk[update][0][updated_at]=1727702600"

    assert change_of(first, MORNING) == "talk:106564:update@1727702000"
    assert change_of(second, MORNING) == "talk:106564:update@1727702600"


def test_talk_update_without_timestamp_names_its_flags_and_the_day() -> None:
    body = (
        b"talk[update][0][talk_id]=106564&talk[update][0][is_read]=1&talk[update][0][is_in_work]=0"
    )

    assert change_of(body, MORNING) == "talk:106564:update:r1w0~2026-12-07"


def test_unsorted_update_is_keyed_by_day_and_add_by_its_uid_alone() -> None:
    update = b"unsorted[update][0][uid]=ab12"
    add = b"unsorted[add][0][uid]=ab12"

    assert change_of(update, MORNING) == "unsorted:ab12:update~2026-12-07"
    assert change_of(add, MORNING) == change_of(add, MORNING + timedelta(days=3))


def test_delivery_time_without_zone_is_taken_as_utc() -> None:
    body = b"leads[delete][0][id]=5"

    assert change_of(body, datetime(2026, 12, 7, 23, 59)) == "lead:5:delete~2026-12-07"


def test_delivery_day_is_the_utc_day_whatever_zone_the_time_is_given_in() -> None:
    two_at_night_in_moscow = datetime(2026, 12, 8, 2, 0, tzinfo=timezone(timedelta(hours=3)))
    body = b"leads[delete][0][id]=5"

    assert change_of(body, two_at_night_in_moscow) == "lead:5:delete~2026-12-07"
