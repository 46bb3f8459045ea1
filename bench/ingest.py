"""Webhook ingest: our app vs a bare Flask app, same gunicorn settings, same load.

Starts `gunicorn wsgi:app` (2 sync workers, SQLite default, every webhook committed
before its answer) and a bare Flask app that only parses the form and answers 200,
drives each with the same concurrent load of realistic webhook bodies (16 keep-alive
connections from 4 load processes, distinct lead ids so nothing is de-duplicated), and
prints webhooks/s for each, the ratio ours/bare, and p50/p99 latency.

Targets: ratio >= 0.5, p99 < 25 ms.   Run: `python bench/ingest.py [--seconds 10]`
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTIONS = 16
LOADERS = 4
SECRET = "bench-secret"

RULES = """\
version: 1
rules:
  - name: qualified
    on: lead.status_changed
    when: {status_id: 59936202}
    launch: {bot_id: 101, entity: lead}
  - name: new-chat
    on: talk.added
    launch: {bot_id: 202, entity: contact}
"""

BARE_APP = """\
from flask import Flask, request

app = Flask(__name__)


@app.post("/webhooks/amocrm/<secret>")
def receive(secret):
    request.form  # parse the body, as any webhook receiver must
    return {"ok": True}
"""


def status_body(lead_id: int) -> bytes:
    """A stage change shaped like amoCRM's, with tags and custom fields."""
    item = {
        "id": lead_id,
        "name": "Заявка с сайта",
        "status_id": 59936202,
        "old_status_id": 59936198,
        "price": 15000,
        "responsible_user_id": 10004026,
        "last_modified": 1727700894,
        "pipeline_id": 7173574,
        "old_pipeline_id": 7173574,
        "tags][0][id": 276241,
        "tags][0][name": "site",
        "custom_fields][0][id": 1425011,
        "custom_fields][0][name": "Город",
        "custom_fields][0][values][0][value": "Москва",
        "account_id": 30112233,
        "updated_at": 1727700894,
    }
    fields = {"account[subdomain]": "mybrand", "account[id]": "30112233"}
    fields |= {f"leads[status][0][{key}]": value for key, value in item.items()}
    return urlencode(fields).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(
    app: str, cwd: Path, env: dict[str, str], threads: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", app]
    if threads > 1:  # gthread workers: a thread waiting for fsync no longer idles the worker
        command += ["-k", "gthread", "--threads", str(threads)]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                time.sleep(1.0)  # let both workers finish booting
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{app} did not start")


def load(port: int, seconds: float, first_id: int, connections: int, queue: object) -> None:
    """One load process: `connections` keep-alive connections, round-robin, for `seconds`."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(connections)]
    latencies: list[float] = []
    errors = 0
    lead_id = first_id
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    while time.monotonic() < deadline:
        for conn in conns:
            body = status_body(lead_id)
            lead_id += 1
            started = time.perf_counter()
            conn.request("POST", f"/webhooks/amocrm/{SECRET}", body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            latencies.append(time.perf_counter() - started)
            errors += answer.status != 200
    queue.put((latencies, errors))  # type: ignore[attr-defined]


def drive(port: int, seconds: float) -> tuple[float, float, float, int]:
    """Run the load; return (requests/s, p50 ms, p99 ms, errors)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    per = CONNECTIONS // LOADERS
    workers = [
        context.Process(target=load, args=(port, seconds, 10_000_000 * (i + 1), per, queue))
        for i in range(LOADERS)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.join()
    latencies = sorted(value for result in results for value in result[0])
    errors = sum(result[1] for result in results)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000, errors


def measure(
    app: str, cwd: Path, env: dict[str, str], seconds: float, threads: int
) -> tuple[float, float, float, int]:
    process, port = start_gunicorn(app, cwd, env, threads)
    try:
        drive(port, 1.0)  # warm-up
        return drive(port, seconds)
    finally:
        process.terminate()
        process.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="gthread threads per worker (default: sync)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "rules.yaml").write_text(RULES)
        (work / "bare.py").write_text(BARE_APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_")}
        env |= {
            "DATABASE_URL": f"sqlite:///{work}/bench.db",
            "RULES_FILE": str(work / "rules.yaml"),
            "WEBHOOK_SECRET": SECRET,
            "PYTHONPATH": str(ROOT),
            "LOG_FORMAT": "text",
        }
        bare = measure("bare:app", work, env, args.seconds, args.threads)
        ours = measure("wsgi:app", ROOT, env, args.seconds, args.threads)
        stored = count_deliveries(work / "bench.db")
    workers = "2 sync workers" if args.threads <= 1 else f"2 gthread workers x {args.threads}"
    print(f"gunicorn: {workers}, both apps")
    print(f"{'app':<6}{'webhooks/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, (rate, p50, p99, errors) in (("bare", bare), ("ours", ours)):
        print(f"{name:<6}{rate:>12.0f}{p50:>9.2f}{p99:>9.2f}{errors:>8}")
    ratio = ours[0] / bare[0]
    print(
        f"ratio ours/bare: {ratio:.2f} (target >= 0.5)   ours p99: {ours[2]:.1f} ms (target < 25)"
    )
    print(f"deliveries committed: {stored}, each before its 200 (SQLite WAL, synchronous=FULL)")


def count_deliveries(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return int(connection.execute("select count(*) from deliveries").fetchone()[0])


if __name__ == "__main__":
    main()
