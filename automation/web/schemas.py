"""Every response shape of the read API, and the JSON of `launches list|show --json`.

The shapes are pydantic models around the store's own records (`story.LaunchRecord`,
`DeliveryRecord`, `CallRecord`), so that `web.openapi` can publish their JSON Schemas:
the document, the answers and the CLI's `--json` come from the same definitions, so
`--json` and the API name every field alike. Where a script may still read an older
name of the CLI's, `LEGACY` says which, and the CLI adds it next to the new one.

Pydantic only, no Flask: `automation launches` renders these without the web layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

from automation.store.deliveries import Expansion
from automation.store.story import CallRecord, DeliveryRecord, LaunchRecord, LaunchStory

#: Serializes a bare launch record the way the models serialize the ones they hold.
_LAUNCH = TypeAdapter(LaunchRecord)


class _Out(BaseModel):
    """A response shape: strict, so its JSON Schema says `additionalProperties: false`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Error(_Out):
    """Every error answer: one message that names what was wrong."""

    error: str


class LaunchPage(_Out):
    """A page of launches, newest first; `next_cursor` is None on the last page."""

    launches: list[LaunchRecord]
    next_cursor: str | None


class LaunchDetail(_Out):
    """A launch, the delivery that caused it, every call it rode in (oldest first) and
    why it is where it is: the one launch story `launches show` tells too."""

    launch: LaunchRecord
    delivery: DeliveryRecord | None
    calls: list[CallRecord]
    #: One sentence: why the launch ended (or waits) where it does.
    verdict: str


class DeliveryDetail(_Out):
    """A stored webhook, its body as text (UTF-8, bad bytes replaced) and a window of
    its launches by id (`delivery.launch_count` counts them all)."""

    delivery: DeliveryRecord
    body: str
    launches: list[LaunchRecord]
    #: The window: the first launch shown (counting from 0) and how many at most.
    offset: int = 0
    limit: int
    #: A large webhook stored raw (`queued`): how far its expansion got; else None.
    expansion: Expansion | None = None


def detail_of(told: LaunchStory) -> LaunchDetail:
    """The API's (and `launches show --json`'s) form of a launch's story."""
    return LaunchDetail(
        launch=told.launch, delivery=told.delivery, calls=list(told.calls), verdict=told.verdict
    )


# ------------------------------------------------------------------ the CLI's JSON

#: Names `launches list|show --json` printed before they shared the API's schema, kept
#: next to the API's name because scripts (and tests) read them: old name → new name.
LEGACY = {
    "launch": {"entity_kind": "entity"},
    "story": {"source": "delivery", "attempts": "calls"},
}


def launches_json(launches: Sequence[LaunchRecord], call_statuses: Mapping[int, int]) -> str:
    """`launches list --json`: one array of launches as the API shows them, with the
    legacy names and `call_status_code` (see `story.call_status_codes`), which scripts
    of the `launch_log` days read."""
    return _dumps(
        [
            _launch_json(launch) | {"call_status_code": call_statuses.get(launch.id)}
            for launch in launches
        ]
    )


def story_json(told: LaunchStory) -> str:
    """`launches show --json`: one `LaunchDetail` object, with the legacy names."""
    document = _plain(detail_of(told).model_dump())
    document["launch"] = _with_legacy(document["launch"], "launch")
    return _dumps(_with_legacy(document, "story"))


def _launch_json(launch: LaunchRecord) -> dict[str, Any]:
    return _with_legacy(_plain(_LAUNCH.dump_python(launch)), "launch")


def _with_legacy(document: dict[str, Any], kind: str) -> dict[str, Any]:
    return document | {old: document[new] for old, new in LEGACY[kind].items()}


def _plain(value: Any) -> Any:
    """Times as ISO 8601 with `+00:00` and enums as their values, as `--json` always
    printed them (the API writes `Z`; both are RFC 3339)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def _dumps(value: Any) -> str:
    """Indented for people and still one document for scripts."""
    return json.dumps(value, ensure_ascii=False, indent=2)
