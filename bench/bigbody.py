"""Large webhooks against `automation serve`: how fast the big one is answered, how
long small webhooks wait meanwhile, and how long the expansion into launches takes.

Issue 17, item 6: a 908 KB form body of 30,000 minimal leads took 2.68 s to answer (a
589 KB JSON body of 40,000, 2.88 s), and a small webhook waited 2.64 s behind the write
lock meanwhile. Now such a body is stored raw and answered `queued`, and the
dispatcher's expander stores its launches in short chunks (docs/operating.md, "Large
webhooks"). Targets: the big answer in under 1 s, small webhooks delayed by no more
than about 100 ms while the expansion runs.

Per database (SQLite in a temporary directory; PostgreSQL with `--database-url` or
TEST_DATABASE_URL, in a scratch database of its own) and per body (form, JSON):
small webhooks go out back to back from one client for a few seconds (the baseline),
then the big body is posted while they continue, until its expansion ended. Prints
the big answer's time, the small webhooks' p50 / p99 / max before and during the
expansion, and the expansion's time (from the 200 to the delivery's `accepted`).

    python bench/bigbody.py [--database-url URL] [--only sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from automation.store.database import make_engine  # noqa: E402
from automation.store.models import Delivery, Launch, QueuedDelivery  # noqa: E402
from tests.gunicorn import BIN, free_port  # noqa: E402
from tests.postgres import scratch_database  # noqa: E402

SECRET = "bigbody-secret-0123456789"
FORM = "application/x-www-form-urlencoded"
RULES = """\
version: 1
rules:
  - name: welcome-new-lead
    on: lead.added
    launch: {bot_id: 404, entity: lead}
  - name: qualified
    on: lead.status_changed
    when: {status_id: 59936202}
    launch: {bot_id: 101, entity: lead}
"""
BASELINE_SECONDS = 3.0


def form_body(leads: int) -> bytes:
    """30,000 leads: about 897 KB, one field a lead (the issue's was 908 KB)."""
    fields = ["account[id]=30112233", "account[subdomain]=mybrand"]
    fields += [f"leads[add][{i}][id]={27_000_000 + i}" for i in range(leads)]
    return "&".join(fields).encode()


def json_body(leads: int) -> bytes:
    """40,000 leads: about 625 KB of JSON with integer ids (the issue's was 589 KB)."""
    body = {
        "account": {"id": 30112233, "subdomain": "mybrand"},
        "leads": {"add": [{"id": 28_000_000 + i} for i in range(leads)]},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def small_body(number: int) -> bytes:
    """A one-lead stage move of about 130 bytes that the `qualified` rule launches."""
    return (
        f"account[id]=30112233&leads[status][0][id]={50_000_000 + number}"
        f"&leads[status][0][status_id]=59936202&leads[status][0][pipeline_id]=7173574"
    ).encode()


class SmallWebhooks(threading.Thread):
    """Small webhooks back to back from one client; each one's answer time, by when."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stopping = url, threading.Event()
        self.samples: list[tuple[float, float]] = []  # (sent at, seconds)
        self.failures = 0

    def run(self) -> None:
        session, number = requests.Session(), 0
        while not self.stopping.is_set():
            number += 1
            started = time.monotonic()
            answer = session.post(
                self.url, data=small_body(number), headers={"Content-Type": FORM}, timeout=30
            )
            self.failures += answer.status_code != 200
            self.samples.append((started, time.monotonic() - started))
            time.sleep(0.01)

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for at, seconds in self.samples if start <= at < end]


@contextmanager
def served(database_url: str, workdir: Path) -> Iterator[str]:
    """`automation serve` (2 workers, its dispatcher in dry-run mode) until the end."""
    rules = workdir / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_")}
    env |= {
        "DATABASE_URL": database_url,
        "RULES_FILE": str(rules),
        "WEBHOOK_SECRET": SECRET,
        "DRY_RUN": "1",
    }
    command = [str(BIN / "automation"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield f"{url}/webhooks/amocrm/{SECRET}"
    finally:
        process.terminate()
        process.wait(60)


def expansion_done(database_url: str, delivery_id: int, timeout: float = 600) -> float:
    """Wait for the queued delivery's expansion to end; when it did (monotonic)."""
    engine = make_engine(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                finished = connection.scalar(
                    select(QueuedDelivery.finished_at).where(
                        QueuedDelivery.delivery_id == delivery_id
                    )
                )
            if finished is not None:
                return time.monotonic()
            time.sleep(0.05)
        raise SystemExit(f"delivery {delivery_id} not expanded within {timeout:g}s")
    finally:
        engine.dispose()


def launches_of(database_url: str, delivery_id: int) -> tuple[int, str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            count = connection.scalar(
                select(func.count()).select_from(Launch).where(Launch.delivery_id == delivery_id)
            )
            status = connection.scalar(select(Delivery.status).where(Delivery.id == delivery_id))
        return int(count or 0), str(status)
    finally:
        engine.dispose()


def ms(values: list[float], share: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))]:.0f}"


def describe(values: list[float]) -> str:
    if not values:
        return "no samples"
    median = 1000 * statistics.median(values)
    return (
        f"n={len(values)} p50={median:.0f} p99={ms(values, 0.99)} max={1000 * max(values):.0f} ms"
    )


def one_run(database_url: str, name: str, body: bytes, content_type: str, leads: int) -> None:
    with tempfile.TemporaryDirectory() as workdir, served(database_url, Path(workdir)) as hook:
        small = SmallWebhooks(hook)
        small.start()
        time.sleep(BASELINE_SECONDS)
        posted = time.monotonic()
        answer = requests.post(hook, data=body, headers={"Content-Type": content_type}, timeout=60)
        answered = time.monotonic()
        assert answer.status_code == 200, answer.text
        delivery_id = answer.json()["delivery_id"]
        done = expansion_done(database_url, delivery_id)
        small.stopping.set()
        small.join()
        count, status = launches_of(database_url, delivery_id)
        before = small.between(posted - BASELINE_SECONDS, posted)
        during = small.between(posted, done)
        print(
            f"{name}: {len(body) / 1024:.0f} KB, {leads} leads: answered "
            f"{answer.json().get('status', 'stored')} in {1000 * (answered - posted):.0f} ms; "
            f"expanded in {done - answered:.1f} s ({count} launches, {status}); small "
            f"webhooks before: {describe(before)}; during: {describe(during)}; "
            f"non-200: {small.failures}",
            flush=True,
        )


def run_database(database_url: str, label: str) -> None:
    one_run(database_url, f"{label} form", form_body(30_000), FORM, 30_000)
    one_run(database_url, f"{label} JSON", json_body(40_000), "application/json", 40_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    if args.only != "postgresql":
        with tempfile.TemporaryDirectory() as directory:
            run_database(f"sqlite:///{directory}/bench.db", "SQLite")
    if args.only != "sqlite":
        if not args.database_url:
            print("PostgreSQL skipped: no --database-url and no TEST_DATABASE_URL")
            return
        with scratch_database(args.database_url, "bigbody") as url:
            run_database(url, "PostgreSQL")


if __name__ == "__main__":
    main()
