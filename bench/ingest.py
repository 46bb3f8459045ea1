"""Webhook ingest: our app vs a bare Flask app, same gunicorn settings, same load.

Starts `gunicorn wsgi:app` (2 sync workers, SQLite default, every webhook committed
before its answer) and a bare Flask app that only parses the form and answers 200,
drives each with the same concurrent load of realistic webhook bodies (16 keep-alive
connections from 4 load processes, distinct lead ids so nothing is de-duplicated), and
prints webhooks/s for each, the ratio ours/bare, and p50/p99 latency.

The machine is shared and noisy, so both servers run side by side and the load
alternates between them in short rounds (bare, ours, ours, bare, …): a burst of
someone else's work then lands on both sides of the ratio. Each round's ratio is
printed too, so the spread is visible. Where /proc exists, the CPU the server
processes used per webhook is printed as well: unlike a rate, it hardly depends on
what else the machine is doing.

Targets: ratio >= 0.5, p99 < 25 ms.   Run: `python bench/ingest.py [--seconds 5 --rounds 3]`
"""

from __future__ import annotations

import argparse
import http.client
import itertools
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


def drive(port: int, seconds: float) -> tuple[int, float, list[float], int]:
    """Run the load; return (requests, elapsed seconds, latencies, errors)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    per = CONNECTIONS // LOADERS
    first = next(_ID_BLOCKS) * 1_000_000_000  # lead ids never repeat across rounds
    workers = [
        context.Process(target=load, args=(port, seconds, first + 10_000_000 * i, per, queue))
        for i in range(LOADERS)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.join()
    latencies = [value for result in results for value in result[0]]
    errors = sum(result[1] for result in results)
    return len(latencies), elapsed, latencies, errors


_ID_BLOCKS = itertools.count(1)


def server_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a gunicorn master and its workers so far (Linux only)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0
        for process in [pid, *map(int, children)]:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


class Tally:
    """One app's results, summed over its rounds."""

    def __init__(self) -> None:
        self.requests = 0
        self.elapsed = 0.0
        self.latencies: list[float] = []
        self.errors = 0
        self.cpu: float | None = 0.0
        self.rates: list[float] = []

    def round(self, process: subprocess.Popen[bytes], port: int, seconds: float) -> None:
        before = server_cpu_seconds(process.pid)
        requests, elapsed, latencies, errors = drive(port, seconds)
        after = server_cpu_seconds(process.pid)
        self.requests += requests
        self.elapsed += elapsed
        self.latencies += latencies
        self.errors += errors
        self.rates.append(requests / elapsed)
        if self.cpu is not None and before is not None and after is not None:
            self.cpu += after - before
        else:
            self.cpu = None

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed

    def row(self, name: str) -> str:
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
        cpu = "n/a" if self.cpu is None else f"{self.cpu / self.requests * 1000:.2f}"
        return f"{name:<6}{self.rate:>12.0f}{p50:>9.2f}{p99:>9.2f}{cpu:>14}{self.errors:>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per app and round")
    parser.add_argument("--rounds", type=int, default=3)
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
        servers = {
            "bare": start_gunicorn("bare:app", work, env, args.threads),
            "ours": start_gunicorn("wsgi:app", ROOT, env, args.threads),
        }
        tallies = {name: Tally() for name in servers}
        try:
            for _, port in servers.values():
                drive(port, 1.0)  # warm-up
            for number in range(args.rounds):
                order = ("bare", "ours") if number % 2 == 0 else ("ours", "bare")
                for name in order:
                    tallies[name].round(*servers[name], args.seconds)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(15)
        stored = count_deliveries(work / "bench.db")
    report(tallies, args.threads, stored)


def report(tallies: dict[str, Tally], threads: int, stored: int) -> None:
    bare, ours = tallies["bare"], tallies["ours"]
    workers = "2 sync workers" if threads <= 1 else f"2 gthread workers x {threads}"
    print(f"gunicorn: {workers}, both apps; {len(bare.rates)} rounds each, alternating")
    print(f"{'app':<6}{'webhooks/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>14}{'errors':>8}")
    print(bare.row("bare"))
    print(ours.row("ours"))
    rounds = ", ".join(f"{o / b:.2f}" for o, b in zip(ours.rates, bare.rates, strict=True))
    ratio = ours.rate / bare.rate
    ours_p99 = sorted(ours.latencies)[int(len(ours.latencies) * 0.99) - 1] * 1000
    print(f"ratio ours/bare: {ratio:.2f} (target >= 0.5; per round: {rounds})")
    print(f"ours p99: {ours_p99:.1f} ms (target < 25)")
    if bare.cpu is not None and ours.cpu is not None:
        cpu_ratio = (bare.cpu / bare.requests) / (ours.cpu / ours.requests)
        print(f"server CPU per webhook, bare/ours: {cpu_ratio:.2f}")
    print(f"deliveries committed: {stored}, each before its 200 (SQLite WAL, synchronous=FULL)")
    if ours.errors or stored < ours.requests:
        raise SystemExit(f"{ours.errors} errors; {ours.requests} answered but {stored} stored")


def count_deliveries(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return int(connection.execute("select count(*) from deliveries").fetchone()[0])


if __name__ == "__main__":
    main()
