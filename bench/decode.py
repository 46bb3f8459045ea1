"""How fast `decode_body` turns a bulk `leads[status]` webhook into events.

A bulk stage move of N leads arrives as one body with N items shaped like
`tests/fixtures/webhooks/status_lead.form` (tags and custom fields included), about 25
form fields per lead. amoCRM waits at most 2 s for the reply, and the decoder is only
one step of it, so 500 leads should decode well under 50 ms, and time should grow
linearly with the lead count.

Run: `python bench/decode.py` (not a test; prints its figures).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from automation.events.payloads import decode_body

FIXTURE = Path(__file__).parents[1] / "tests/fixtures/webhooks/status_lead.form"
SIZES = (50, 500, 5000)
REPEAT = 5
MIN_SECONDS = 2.0
RECEIVED_AT = datetime(2024, 10, 1, 9, 0, tzinfo=UTC)
TARGET_MS_FOR_500 = 50.0
_ITEM_KEY = re.compile(r"^leads\[status\]\[0\](.*)$")


def template() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The fixture's account fields and its one lead's fields (suffix after `[0]`)."""
    pairs = parse_qsl(FIXTURE.read_text(encoding="utf-8").strip(), keep_blank_values=True)
    account = [(key, value) for key, value in pairs if key.startswith("account[")]
    item = [(m[1], value) for key, value in pairs if (m := _ITEM_KEY.match(key))]
    return account, item


def lead_fields(item: list[tuple[str, str]], index: int) -> list[tuple[str, str]]:
    """One lead of the bulk move: the fixture lead with its own id, name, tags and price."""
    own = {
        "[id]": str(27_000_000 + index),
        "[name]": f"Заявка с сайта №{index}",
        "[price]": str(1000 * (index % 50)),
    }
    fields = [(f"leads[status][{index}]{suffix}", own.get(suffix, value)) for suffix, value in item]
    fields += [
        (f"leads[status][{index}][tags][1][id]", str(300_000 + index % 7)),
        (f"leads[status][{index}][tags][1][name]", f"партия {index % 7}"),
    ]
    return fields


def build_body(leads: int) -> bytes:
    """A `leads[status]` body of `leads` items, encoded as amoCRM's PHP does."""
    account, item = template()
    pairs = list(account)
    for index in range(leads):
        pairs += lead_fields(item, index)
    return urlencode(pairs).encode()


def best_seconds(body: bytes) -> tuple[float, float]:
    """Best wall-clock and best CPU time of single `decode_body(body)` runs.

    At least `REPEAT` runs and `MIN_SECONDS` of them. The minimum of single runs, not of
    averages over batches: on a shared machine most runs are slowed by other processes,
    and one undisturbed run is what the decoder itself costs. CPU time (this process
    only) is printed beside it to show how much of the wall time was waiting. Garbage
    collection stays on, as in the server: `timeit` turns it off, and with it up to a
    fifth of the time a 5,000-lead body takes.
    """
    walls: list[float] = []
    cpus: list[float] = []
    started = time.perf_counter()
    while len(walls) < REPEAT or time.perf_counter() - started < MIN_SECONDS:
        wall, cpu = time.perf_counter(), time.process_time()
        decode_body(body, received_at=RECEIVED_AT)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    per_lead: dict[int, float] = {}
    print(f"decode_body, best single run of at least {REPEAT} and {MIN_SECONDS:.0f} s")
    for leads in SIZES:
        body = build_body(leads)
        events = decode_body(body, received_at=RECEIVED_AT).events
        assert len(events) == leads, f"expected {leads} events, got {len(events)}"
        seconds, cpu_seconds = best_seconds(body)
        per_lead[leads] = seconds / leads
        print(
            f"{leads:>5} leads  {len(body) / 1024:>8.0f} KiB  {seconds * 1000:>9.2f} ms/body"
            f"  {per_lead[leads] * 1e6:>6.1f} µs/lead  (CPU {cpu_seconds * 1000:.2f} ms)"
        )
    ratio = per_lead[5000] / per_lead[500]
    print(f"per-lead time 5000 vs 500: {ratio:.2f}x (1.00 = linear)")
    ms_500 = per_lead[500] * 500 * 1000
    verdict = "ok" if ms_500 < TARGET_MS_FOR_500 else "TOO SLOW"
    print(f"500 leads: {ms_500:.1f} ms, target < {TARGET_MS_FOR_500:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
