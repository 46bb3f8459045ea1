"""What the delivery's entity rows cost when a webhook is stored, with and without them.

Since "why did no bot start" every delivery stores the entities its events name
(`delivery_entities`: one small row per lead, contact, company, customer or chat
contact), in the transaction that holds SQLite's only write lock. The end-to-end
ingest benchmark varies by ±20 % from run to run on the shared machine, more than the
effect, so this one measures the store step alone, in one process: the same webhook's
rows stored in one transaction each (`synchronous=FULL`, as the server does), rounds
alternating between storing the entity rows and skipping them, for a one-lead webhook
and a bulk move of 500 leads. It prints the CPU per webhook of each arm (the best
round: other people's work only ever adds time), the difference in percent of the
store step, and in percent of the webhook's whole in-process work (decoding, matching
and storing; the HTTP handling around it would make the share smaller still).

Run: `python bench/entities.py [--rounds 10 --webhooks 300]` (not a test).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import build_body

from automation.events.payloads import decode_body
from automation.rules.load import load_rules
from automation.store import intake
from automation.store.database import make_engine, upgrade

RULES = """\
version: 1
rules:
  - name: qualified
    on: lead.status_changed
    launch: {bot_id: 101, entity: lead}
"""
CONTENT_TYPE = "application/x-www-form-urlencoded"


def rows_for(leads: int, serial: int) -> intake.Rows:
    """One webhook's rows; `serial` makes its change keys (so its launches) new."""
    received_at = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).replace(microsecond=serial % 10**6)
    body = build_body(leads).replace(b"27000", str(10_000 + serial).encode())
    payload = decode_body(body, CONTENT_TYPE, received_at=received_at)
    planned = load_rules(RULES).plan(payload.events, received_at)
    inbound = intake.Inbound(body, CONTENT_TYPE, "127.0.0.1", received_at, payload)
    return intake.Rows.of(inbound, planned)


def arm(engine: Any, batches: list[intake.Rows], entities: bool) -> tuple[float, float]:
    """Store every webhook of `batches`, one transaction each: (CPU s, wall s)."""
    stored: Callable[..., Any] = intake.INSERT_ENTITY.execute_many
    if not entities:
        intake.INSERT_ENTITY.execute_many = lambda *_: None  # type: ignore[method-assign]
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for rows in batches:
            with engine.begin() as connection:
                intake.store(connection, rows)
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        intake.INSERT_ENTITY.execute_many = stored  # type: ignore[method-assign]


def measure(engine: Any, leads: int, webhooks: int, rounds: int) -> None:
    serial = iter(range(10**9))
    cost: dict[bool, list[float]] = {True: [], False: []}
    prepare: list[float] = []
    for number in range(rounds):
        for entities in (True, False) if number % 2 == 0 else (False, True):
            started = time.process_time()
            batches = [rows_for(leads, next(serial)) for _ in range(webhooks)]
            prepare.append((time.process_time() - started) / webhooks * 1000)
            cpu, _wall = arm(engine, batches, entities)
            cost[entities].append(cpu / webhooks * 1000)
    with_, without, before = min(cost[True]), min(cost[False]), min(prepare)
    extra = with_ - without
    print(
        f"{leads:>5} lead(s): store {with_:.3f} ms CPU with entity rows, {without:.3f} without "
        f"({extra / without * 100:+.1f} % of the store step); decode and match {before:.3f} ms; "
        f"{extra / (before + without) * 100:+.1f} % of the webhook's work"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="per arm, alternating")
    parser.add_argument("--webhooks", type=int, default=300, help="one-lead webhooks per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        engine = make_engine(url)
        print(
            f"best of {args.rounds} rounds per arm, SQLite synchronous=FULL, one transaction each"
        )
        measure(engine, 1, args.webhooks, args.rounds)
        measure(engine, 500, max(1, args.webhooks // 100), args.rounds)
        engine.dispose()


if __name__ == "__main__":
    main()
