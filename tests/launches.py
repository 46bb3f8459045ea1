"""Rows as the server writes them, put straight into the database: pending launches for
dispatcher tests and benchmarks, deliveries for the tests that read stored webhooks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from automation.store.models import Launch
from automation.store.states import DeliveryStatus, LaunchStatus

FORM = "application/x-www-form-urlencoded"


def launch_values(at: datetime, **overrides: Any) -> dict[str, Any]:
    """A pending launch row of rule `qualified` on lead 27754599, due and created `at`."""
    return {
        "rule": "qualified",
        "event_type": "lead.status_changed",
        "event_group": "leads[status]",
        "event_index": 0,
        "bot_id": 101,
        "entity_type": 2,
        "entity_id": 27754599,
        "change_key": "lead:27754599@1727700894:s59936202",
        "dedupe_key": uuid.uuid4().hex,
        "status": LaunchStatus.PENDING,
        "not_before": at,
        "attempts": 0,
        "retries": 0,
        "created_at": at,
        "updated_at": at,
    } | overrides


def delivery_values(at: datetime, **overrides: Any) -> dict[str, Any]:
    """A delivery row received `at`: an accepted, empty form body unless `overrides` say
    otherwise (the body, its counts, its status)."""
    return {
        "received_at": at,
        "content_type": FORM,
        "body": b"",
        "event_count": 0,
        "launch_count": 0,
        "duplicate_count": 0,
        "status": DeliveryStatus.ACCEPTED,
    } | overrides


def add_launches(
    sessions: sessionmaker[Session],
    count: int,
    *,
    bot_id: int = 7,
    first_entity: int = 1000,
    entity_type: int = 2,
    not_before: datetime | None = None,
    chunk: int = 5000,
) -> None:
    """Add `count` due launches of `bot_id` on entities `first_entity…`, in id order."""
    now = datetime.now(UTC)
    due = not_before or now - timedelta(seconds=1)
    tag = uuid.uuid4().hex
    rows = [
        launch_values(
            now,
            rule="test",
            bot_id=bot_id,
            entity_type=entity_type,
            entity_id=first_entity + i,
            change_key=f"lead:{first_entity + i}",
            dedupe_key=f"{tag}:{i}",
            not_before=due,
        )
        for i in range(count)
    ]
    for start in range(0, count, chunk):
        with sessions.begin() as session:
            session.execute(insert(Launch), rows[start : start + chunk])


def leads_form(
    count: int,
    account: int | str | None = 30112233,
    *,
    first: int = 27_000_000,
    subdomain: str | None = None,
) -> bytes:
    """A form body of `count` minimal added leads, one field each (about 30 bytes a
    lead): the large webhooks' tests and benchmarks. No `account[id]` for None."""
    fields = [] if account is None else [f"account[id]={account}"]
    fields += [] if subdomain is None else [f"account[subdomain]={subdomain}"]
    fields += [f"leads[add][{i}][id]={first + i}" for i in range(count)]
    return "&".join(fields).encode()
