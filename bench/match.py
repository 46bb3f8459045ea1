"""What matching one event costs with 10 rules and with 1,000 (a benchmark, not a test).

Rules are indexed by event type when the file is loaded, so an event only meets the
rules that listen to its type. Both rule sets give the measured event type
(`lead.status_changed`) the same 5 rules; the other rules listen to other event
types, as in a real file. The last line is the unindexable case for contrast: all
1,000 rules on the event's own type, which costs in proportion.

    python bench/match.py
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from automation.rules.load import RULE_EVENT_TYPES, RuleSet, decode_payload, load_rules

BODY = Path(__file__).parents[1] / "tests" / "fixtures" / "webhooks" / "status_lead.form"
TARGET = "lead.status_changed"
SAME_TYPE_RULES = 5
ENTITY_OF_FAMILY = {"contact": "contact", "company": "company", "customer": "customer"}


def rule(index: int, event_type: str, status_id: int) -> str:
    """One rule in flow style; the entity is one its event type carries."""
    entity = ENTITY_OF_FAMILY.get(event_type.split(".")[0], "lead")
    return (
        f"  - {{name: rule-{index}, on: {event_type}, when: {{status_id: {status_id}}}, "
        f"launch: {{bot_id: {index + 1}, entity: {entity}}}}}\n"
    )


def rules_text(total: int, on_target: int) -> str:
    """`on_target` rules on the measured type (one matches), the rest spread elsewhere."""
    others = [name for name in RULE_EVENT_TYPES if name != TARGET]
    lines = [rule(i, TARGET, 59936202 if i == 0 else i) for i in range(on_target)]
    lines += [rule(i, others[i % len(others)], i) for i in range(on_target, total)]
    return "version: 1\nrules:\n" + "".join(lines)


def per_event_seconds(rules: RuleSet, rounds: int = 20_000, repeats: int = 5) -> float:
    """Best of `repeats` runs of `rounds` matches of the same event."""
    now = datetime(2024, 10, 1, 9, 0, tzinfo=UTC)
    event = decode_payload(BODY.read_bytes().strip(), now).events[0]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(rounds):
            rules.match(event, now)
        best = min(best, (time.perf_counter() - started) / rounds)
    return best


def main() -> None:
    small = per_event_seconds(load_rules(rules_text(10, SAME_TYPE_RULES)))
    large = per_event_seconds(load_rules(rules_text(1000, SAME_TYPE_RULES)))
    worst = per_event_seconds(load_rules(rules_text(1000, 1000)), rounds=500)
    print(f"{SAME_TYPE_RULES} rules on {TARGET}, the rest on other event types")
    print(f"   10 rules: {small * 1e6:8.2f} µs per event")
    print(f" 1000 rules: {large * 1e6:8.2f} µs per event")
    print(f"ratio 1000/10: {large / small:.2f}")
    print(f"for contrast, 1000 rules all on {TARGET}: {worst * 1e6:8.2f} µs per event")


if __name__ == "__main__":
    main()
