"""Put pending launches straight into the outbox, for dispatcher tests and benchmarks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from automation.models import Launch, LaunchStatus


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
        {
            "rule": "test",
            "event_type": "lead.status_changed",
            "event_group": "leads[status]",
            "event_index": 0,
            "bot_id": bot_id,
            "entity_type": entity_type,
            "entity_id": first_entity + i,
            "change_key": f"lead:{first_entity + i}",
            "dedupe_key": f"{tag}:{i}",
            "status": LaunchStatus.PENDING,
            "not_before": due,
            "attempts": 0,
            "retries": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    for start in range(0, count, chunk):
        with sessions.begin() as session:
            session.execute(insert(Launch), rows[start : start + chunk])
