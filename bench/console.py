"""Every console page with 1,000,000 launches on SQLite (a benchmark, not a test).

Builds a migrated SQLite database with 1,000,000 launches spread over 30 days
(mostly sent; some failed, uncertain, pending, cancelled, skipped), 200,000
deliveries (each naming its lead, one in ten a chat contact too, 1 % unrecognized,
judged by one stored rules version) and 20,000 API calls, then asks each page
through Flask's test client as a logged-in admin and prints the median and worst of
several requests. The aim is every page under 100 ms: capped counts, keyset paging
and one index per way the list narrows (migrations 0004, 0007).

    python bench/console.py [--launches 1000000] [--deliveries 200000] [--database PATH]
                            [--rounds 15]

A database made earlier at PATH is reused (building one takes a minute or two).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from automation import create_app
from automation.config import Settings
from automation.store.database import upgrade

TOKEN = "bench-admin-token-0123456789"
STATUSES = [
    ("sent", 0.90),
    ("failed", 0.04),
    ("skipped", 0.02),
    ("pending", 0.02),
    ("uncertain", 0.01),
    ("cancelled", 0.01),
]
RULES = ["welcome", "qualified", "won", "lost", "first-message"]
DAYS = 30
RULES_FILE = """\
version: 1
rules:
  - {name: qualified, on: lead.status_changed, when: {status_id: 59936202},
     launch: {bot_id: 101, entity: lead}}
"""


def build(path: Path, launches: int, deliveries: int) -> None:
    """The database at `path`: migrated, then filled with plain sqlite3 (fast)."""
    upgrade(f"sqlite:///{path}")
    now = datetime.now(UTC).replace(tzinfo=None)
    rng = random.Random(7)
    weights = [weight for _, weight in STATUSES]
    names = [name for name, _ in STATUSES]
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "INSERT INTO rules_versions (content_hash, text, path, first_loaded_at) "
            "VALUES (?, ?, 'rules.yaml', ?)",
            (hashlib.sha256(RULES_FILE.encode()).hexdigest(), RULES_FILE, str(now)),
        )
        connection.executemany(
            "INSERT INTO deliveries (received_at, content_type, body, account_id, "
            "account_subdomain, event_count, launch_count, duplicate_count, status, "
            "rules_version_id) VALUES (?, 'application/x-www-form-urlencoded', ?, 1, "
            "'mybrand', 1, ?, 0, ?, 1)",
            (_delivery(i, deliveries, now) for i in range(deliveries)),
        )
        connection.executemany(
            "INSERT INTO delivery_entities (delivery_id, entity_type, entity_id) VALUES (?, ?, ?)",
            (row for i in range(deliveries) for row in _entities(i, deliveries)),
        )
        connection.executemany(
            "INSERT INTO api_calls (dispatcher, endpoint, launch_count, started_at, "
            "finished_at, status_code, outcome) VALUES ('bench', '/api/v2/salesbot/run', "
            "100, ?, ?, 200, 'accepted')",
            ((str(now - timedelta(seconds=i)),) * 2 for i in range(20_000)),
        )
        rows = (
            _launch(i, launches, now, rng, rng.choices(names, weights)[0]) for i in range(launches)
        )
        connection.executemany(
            "INSERT INTO launches (delivery_id, rule, event_type, event_group, event_index, "
            "bot_id, entity_type, entity_id, change_key, dedupe_key, status, reason, "
            "not_before, attempts, retries, created_at, updated_at) VALUES "
            "(?, ?, 'lead.status_changed', 'leads[status]', 0, ?, 2, ?, ?, ?, ?, ?, ?, 1, 0, ?, ?)",
            rows,
        )
    connection.execute("ANALYZE")
    connection.close()


def _lead(i: int) -> int:
    """The lead delivery `i` is about: 200,000 leads, each in several deliveries."""
    return 1 + (i * 7919) % 200_000


def _delivery(i: int, total: int, now: datetime) -> tuple[object, ...]:
    """Delivery `i` of `total` (ids in time order over the last `DAYS` days): a status
    change of its lead; one in two to the status the rule launches for."""
    received = now - timedelta(seconds=(total - i) * DAYS * 86400 / total)
    status = 59936202 if i % 2 else 142
    body = (
        f"leads[status][0][id]={_lead(i)}&leads[status][0][status_id]={status}"
        f"&leads[status][0][last_modified]={i}&account[id]=1"
    ).encode()
    return (str(received), body, i % 2, "unrecognized" if i % 100 == 0 else "accepted")


def _entities(i: int, total: int) -> list[tuple[int, str, int]]:
    rows = [(i + 1, "lead", _lead(i))]
    if i % 10 == 0:
        rows.append((i + 1, "chat_contact", 500_000 + i % 50_000))
    return rows


def _launch(
    i: int, total: int, now: datetime, rng: random.Random, status: str
) -> tuple[object, ...]:
    """Launch `i` of `total`, created in id order over the last `DAYS` days."""
    created = now - timedelta(seconds=(total - i) * DAYS * 86400 / total)
    entity = rng.randrange(1, 200_000)
    when = str(created)
    return (
        rng.randrange(1, 20_001),  # deliveries with ids up to 20,000 made these
        RULES[i % len(RULES)],
        100 + i % 10,
        entity,
        f"lead:{entity}@{i}",
        f"bench-{i}",
        status,
        "bench" if status != "sent" else None,
        when,
        when,
        when,
    )


def timings(client: object, path: str, rounds: int) -> tuple[float, float]:
    """Median and worst milliseconds of `rounds` requests (after one warm-up)."""
    assert client.get(path).status_code == 200, path  # type: ignore[attr-defined]
    spent = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = client.get(path)  # type: ignore[attr-defined]
        spent.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, path
    return statistics.median(spent), max(spent)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--launches", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=200_000)
    parser.add_argument("--database", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-console-"))
    path = options.database or folder / "console.db"
    if not path.exists():
        started = time.perf_counter()
        build(path, options.launches, options.deliveries)
        spent = time.perf_counter() - started
        print(
            f"built {options.launches:,} launches and {options.deliveries:,} deliveries "
            f"in {spent:.0f} s"
        )
    (folder / "rules.yaml").write_text(RULES_FILE)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{path}",
        rules_file=str(folder / "rules.yaml"),
        admin_token=TOKEN,
        amocrm_subdomain="mybrand",
    )
    app = create_app(settings)
    client = app.test_client()
    login = client.get("/ui/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login)
    assert csrf is not None
    client.post("/ui/login", data={"token": TOKEN, "csrf_token": csrf.group(1)})
    cursor = _second_page(client)
    delivery_cursor = _second_page(client, "/ui/deliveries", r"cursor=([0-9]+)")
    last = options.deliveries
    pages = [
        "/ui/",
        "/ui/launches",
        "/ui/launches?status=sent",
        "/ui/launches?status=failed",
        "/ui/launches?status=uncertain&rule=won",
        "/ui/launches?rule=welcome",
        "/ui/launches?bot_id=104",
        "/ui/launches?entity_id=4242",
        "/ui/launches?q=lead:4242+status:sent",
        "/ui/launches?since=1h",
        "/ui/launches?status=failed&since=2026-01-01&until=3d",
        f"/ui/launches?cursor={cursor}",
        "/ui/launches/500000",
        "/ui/launches/bulk/cancel?rule=welcome",
        "/ui/rules",
        "/ui/deliveries",
        f"/ui/deliveries?entity_id={_lead(last - 1)}",
        "/ui/deliveries?entity_id=4242",
        f"/ui/deliveries?entity_id={500_000 + (last - 10) % 50_000}",
        "/ui/deliveries?status=unrecognized",
        "/ui/deliveries?status=accepted&since=1h",
        f"/ui/deliveries?entity_id={_lead(last - 1)}&since=3d",
        "/ui/deliveries?since=2026-01-01&until=15d",
        f"/ui/deliveries?cursor={delivery_cursor}",
        f"/ui/deliveries/{last}",
        f"/ui/deliveries/{last - 1}",
        "/ui/deliveries/10000",
    ]
    print(f"{'page':58} {'median ms':>10} {'worst ms':>9}")
    for page in pages:
        median, worst = timings(client, page, options.rounds)
        flag = "" if median < 100 else "  <-- over 100 ms"
        print(f"{page:58} {median:10.1f} {worst:9.1f}{flag}")
    app.extensions["automation"].engine.dispose()


def _second_page(
    client: object, path: str = "/ui/launches", pattern: str = r"cursor=([0-9.]+)"
) -> str:
    page = client.get(path).get_data(as_text=True)  # type: ignore[attr-defined]
    found = re.search(pattern, page)
    assert found is not None
    return found.group(1)


if __name__ == "__main__":
    main()
