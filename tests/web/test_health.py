"""`/healthz` and reloading the rules file while the server runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import TEST_RULES


def _touch_later(path: Path, text: str) -> None:
    """Write `text` with an mtime in the future, so the loader sees a change at once."""
    path.write_text(text)
    later = time.time() + 5
    os.utime(path, (later, later))


def test_healthz_reports_database_schema_and_rules(client: Any) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json
    assert body["status"] == "ok"
    assert body["database"]["reachable"] is True
    assert body["database"]["schema_current"] is True
    assert body["rules"]["loaded"] is True
    assert body["rules"]["rule_count"] == 3
    assert body["rules"]["last_error"] is None
    assert body["webhook"] == {"configured": True}


def test_broken_rules_file_keeps_the_last_good_rules_and_shows_in_healthz(
    app: Any, client: Any, rules_file: Path, webhook_body: Callable[[str], bytes]
) -> None:
    time.sleep(1.1)  # the loader looks at the file at most once a second
    _touch_later(rules_file, "version: 1\nrules:\n  - name: x\n    on: lead.nope\n")

    health = client.get("/healthz").json
    assert health["rules"]["rule_count"] == 3
    assert "lead.nope" in health["rules"]["last_error"]
    answer = client.post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.json["launches"] == 1


def test_changed_rules_file_is_picked_up_without_restart(
    client: Any, rules_file: Path, webhook_body: Callable[[str], bytes]
) -> None:
    time.sleep(1.1)
    _touch_later(rules_file, TEST_RULES.replace("bot_id: 101", "bot_id: 999"))
    answer = client.post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.json["launches"] == 1
    assert client.get("/healthz").json["rules"]["last_error"] is None


def test_without_a_webhook_secret_the_server_is_unhealthy_and_says_why(
    make_settings: Callable[..., Any], make_app: Callable[[Any], Any], caplog: Any
) -> None:
    app = make_app(make_settings(webhook_secret=None))

    answer = app.test_client().get("/healthz")

    assert answer.status_code == 503
    assert answer.json["status"] == "unhealthy"
    assert answer.json["webhook"] == {
        "configured": False,
        "error": "WEBHOOK_SECRET is not set: every webhook gets 503",
    }
    assert any("WEBHOOK_SECRET is not set" in record.getMessage() for record in caplog.records)
