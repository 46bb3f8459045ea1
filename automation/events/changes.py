"""Change keys: which change of which entity an event reports. Pure: no I/O, no clock.

A launch is stored once per (rule, bot, entity, change key), so the change key decides
what counts as "the same change": amoCRM's retry of a body, and one stage move
delivered both as `leads[update]` and `leads[status]`, must give the same key; two
different changes must not. The rule per family (also in docs/rules.md, "What counts as
the same change"):

* lead, contact, company, customer, task with a timestamp (`updated_at`, else
  `last_modified`): `lead:<id>@<stamp>:s<status_id>`; a delete or restore
  `lead:<id>:delete:<stamp>`. The timestamp tells changes apart.
* the same without a timestamp (Digital Pipeline's short status form, bare deletes):
  what the body says changed, and the UTC day it was delivered on:
  `lead:<id>:moved:<old pipeline>/<old stage>><pipeline>/<stage>~<day>` for a stage
  move, `lead:<id>:responsible:<old>><new>~<day>` for a new responsible user,
  `lead:<id>:<action>:s<status_id>~<day>` otherwise (`lead:<id>:delete~<day>` when the
  item has no stage either).
* talk: `talk:<talk_id>:add`; an update `talk:<talk_id>:update@<updated_at>`, without
  one `talk:<talk_id>:update:r<is_read>w<is_in_work>~<day>`.
* message, outgoing message: `message:<id>` (their ids are unique).
* unsorted: `unsorted:<uid>:add`, `unsorted:<uid>:delete` (each happens once);
  `unsorted:<uid>:update~<day>`.

The delivery day is passed in (`received_at`), never read from a clock here: a
replay of a stored delivery gives the keys its first arrival gave. A day, because
amoCRM repeats an unanswered webhook for up to about 1.5 hours: a retry lands on the
same day, unless the first try came in the last hour and a half before midnight UTC
(03:00 in Moscow). The same move of the same lead, made again on a later day,
launches again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def delivery_day(received_at: datetime) -> str:
    """`~2026-12-06`: the UTC day a webhook arrived on (a naive time is taken as UTC)."""
    moment = received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)
    return f"~{moment.astimezone(UTC).date().isoformat()}"


def is_stage_move(data: Mapping[str, Any]) -> bool:
    """Whether an item reports a real stage move: it names a previous stage (not an
    empty `old_status_id=`) and that stage, or its pipeline, differs from the new one."""
    old = data.get("old_status_id")
    if not _given(old):
        return False
    if old != data.get("status_id"):
        return True
    old_pipeline = data.get("old_pipeline_id")
    return _given(old_pipeline) and old_pipeline != data.get("pipeline_id")


def change_key(family: str, action: str, data: Mapping[str, Any], day: str) -> str:
    """Identify the change an event reports, independent of the group it came in.

    `day` is `delivery_day` of the delivery; it only enters keys of changes the body
    cannot tell apart by itself (see the module docstring).
    """
    if family in ("message", "outgoing_message"):
        return f"{family}:{data.get('id')}"
    if family == "talk":
        return _talk_key(action, data, day)
    if family == "unsorted":
        uid = data.get("uid")
        return f"unsorted:{uid}:update{day}" if action == "update" else f"unsorted:{uid}:{action}"
    stamp = data.get("updated_at") or data.get("last_modified")
    if not _given(stamp):
        return _undated_key(family, action, data, day)
    if action in ("delete", "restore"):
        return f"{family}:{data.get('id')}:{action}:{stamp}"
    return f"{family}:{data.get('id')}@{stamp}:s{data.get('status_id', '')}"


def _talk_key(action: str, data: Mapping[str, Any], day: str) -> str:
    """A talk is added once; it is updated many times (read, taken into work)."""
    talk = data.get("talk_id")
    if action != "update":
        return f"talk:{talk}:{action}"
    stamp = data.get("updated_at")
    if _given(stamp):
        return f"talk:{talk}:update@{stamp}"
    flags = f"r{_flag(data.get('is_read'))}w{_flag(data.get('is_in_work'))}"
    return f"talk:{talk}:update:{flags}{day}"


def _undated_key(family: str, action: str, data: Mapping[str, Any], day: str) -> str:
    """The key of a CRM item without a timestamp: what changed, on which day."""
    entity = f"{family}:{data.get('id')}"
    if action in ("status", "update") and is_stage_move(data):
        old = f"{_text(data.get('old_pipeline_id'))}/{_text(data.get('old_status_id'))}"
        new = f"{_text(data.get('pipeline_id'))}/{_text(data.get('status_id'))}"
        return f"{entity}:moved:{old}>{new}{day}"
    if action == "responsible":
        old_user = _text(data.get("old_responsible_user_id"))
        return f"{entity}:responsible:{old_user}>{_text(data.get('responsible_user_id'))}{day}"
    status = data.get("status_id")
    return f"{entity}:{action}{f':s{status}' if _given(status) else ''}{day}"


def _given(value: Any) -> bool:
    """A value the body really holds: not absent, not empty, not 0 (no amoCRM id is)."""
    return value is not None and value not in ("", 0)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _flag(value: Any) -> str:
    return "1" if value is True else "0" if value is False else _text(value)
