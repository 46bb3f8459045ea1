"""How fast the dispatcher sends launches, and how soon a webhook reaches amoCRM.

Three measurements against the fake amoCRM of `tests/fake_amocrm.py` on loopback, each
on a fresh database (a temporary SQLite file, and a fresh PostgreSQL database when one
is given) migrated with Alembic:

1. drain:   a backlog of 50,000 due launches, no rate limit (AMOCRM_MAX_RPS=1000);
            one `automation dispatch --once` process drains it. Figures: launches/s
            from the first to the last call the fake recorded (target >= 20,000/s on
            SQLite, >= 10,000/s on PostgreSQL) and the dispatcher's CPU per 1,000
            launches (process start included).
2. paced:   10,000 launches; the fake answers 429 beyond 7 requests/s and the
            dispatcher runs with AMOCRM_MAX_RPS=7. Figures: launches/s over the steady
            part as a fraction of the 700/s ceiling (target >= 0.95), 429s (target 0),
            mean batch size.
3. latency: gunicorn (2 workers, `wsgi:app`) and `automation dispatch` as separate
            processes; distinct lead status-change webhooks posted at 50/s for 10 s.
            Latency = when the fake received the call carrying that lead minus when
            the webhook POST was sent. Target p99 < 1 s.

Run from the repository root (not a test; prints a table and stops by itself):

    python bench/dispatch.py [--postgres URL] [--only drain|paced|latency] [--profile]

PostgreSQL: `--postgres` or TEST_DATABASE_URL names a server URL (for instance
postgresql+psycopg://postgres@127.0.0.1:5432/test); a database `bench_<hex>` is created
there for each run and dropped at the end. Without either, only SQLite runs.
`--profile` adds one more SQLite drain with the dispatcher process under cProfile and
prints where its time goes. Other load on the machine skews every rate: the header
prints the load average, and the drain also reports launches per dispatcher CPU-second.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pstats
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from automation.config import Settings  # noqa: E402
from automation.store.database import make_engine, make_session_factory, upgrade  # noqa: E402
from automation.store.models import DispatcherRow, Launch  # noqa: E402
from tests.fake_amocrm import ACCESS_TOKEN, FakeAmoCRM, RecordedCall  # noqa: E402
from tests.launches import add_launches  # noqa: E402
from tests.postgres import scratch_database  # noqa: E402

DRAIN_LAUNCHES = 50_000
DRAIN_TARGET_PER_S = {"sqlite": 20_000.0, "postgresql": 10_000.0}
DRAIN_MAX_RPS = 1000

PACED_LAUNCHES = 10_000
PACED_RPS = 7
PACED_CEILING_PER_S = PACED_RPS * 100.0
PACED_TARGET_FRACTION = 0.95

WEBHOOK_RATE = 50.0
WEBHOOK_SECONDS = 10.0
WEBHOOK_WARMUP = 10
LATENCY_P99_TARGET_S = 1.0
FIRST_LEAD_ID = 50_000_000
WEBHOOK_SECRET = "bench-secret"
RULES = """\
version: 1
rules:
  - name: bench-status-changed
    on: lead.status_changed
    launch: {bot_id: 101, entity: lead}
"""
STATUS_WEBHOOK = ROOT / "tests" / "fixtures" / "webhooks" / "status_lead.form"
FIXTURE_LEAD_FIELD = "leads%5Bstatus%5D%5B0%5D%5Bid%5D=27754599"

#: Every variable `Settings` reads: stripped from the environment of our processes.
SETTINGS_VARS = frozenset(name.upper() for name in Settings.model_fields)
PROCESS_TIMEOUT_S = 180.0


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Row:
    """One figure of the table; `target` None means informative only."""

    measurement: str
    database: str
    figure: str
    value: float
    unit: str = ""
    target: float | None = None
    #: "min": value should be >= target; "max": value should be < target (or == 0).
    kind: Literal["min", "max"] = "min"

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if self.kind == "min":
            return self.value >= self.target
        return self.value == 0 if self.target == 0 else self.value < self.target

    def cells(self) -> list[str]:
        target = ratio = verdict = "-"
        if self.target is not None:
            sign = ">=" if self.kind == "min" else ("=" if self.target == 0 else "<")
            target = f"{sign} {_number(self.target)}"
            if self.target:
                ratio = f"{self.value / self.target:.3f}"
            verdict = "ok" if self.passed else "MISSED"
        value = f"{_number(self.value)} {self.unit}".rstrip()
        return [self.measurement, self.database, self.figure, value, target, ratio, verdict]


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def print_table(rows: Sequence[Row]) -> None:
    header = ["measurement", "db", "figure", "value", "target", "ratio", "verdict"]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for index, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print("ratio = value / target (for '<' targets, below 1 is good)")


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------- databases


@contextmanager
def fresh_database(kind: str, workdir: Path, admin_url: str | None) -> Iterator[str]:
    """A migrated, empty database: a SQLite file in `workdir`, or a new PostgreSQL
    database on the server of `admin_url`, dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        upgrade(url)
        yield url
        return
    assert admin_url is not None
    with scratch_database(admin_url, "bench") as url:
        yield url


@contextmanager
def session_factory(url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def status_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        rows = session.execute(select(Launch.status, func.count()).group_by(Launch.status))
        return {str(status): int(count) for status, count in rows}


# ---------------------------------------------------------------------- processes


def process_env(**values: str) -> dict[str, str]:
    """Our environment without any setting of the server, plus `values`."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_VARS}
    env.update(values)
    return env


def dispatcher_env(url: str, rules_file: Path, fake: FakeAmoCRM, max_rps: int) -> dict[str, str]:
    return process_env(
        DATABASE_URL=url,
        RULES_FILE=str(rules_file),
        AMOCRM_BASE_URL=fake.url,
        AMOCRM_ACCESS_TOKEN=ACCESS_TOKEN,
        AMOCRM_MAX_RPS=str(max_rps),
        DRY_RUN="0",
    )


@dataclass(frozen=True)
class ProcessTimes:
    wall: float
    #: User + system CPU seconds of the process: less skewed by other load than `wall`.
    cpu: float


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(env: dict[str, str], log: Path, profile: Path | None = None) -> ProcessTimes:
    """`automation dispatch --once` as a process (under cProfile when `profile` names
    the output file); returns its wall and CPU time."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    cpu = children_cpu()
    started = time.monotonic()
    with log.open("wb") as output:
        completed = subprocess.run(
            [sys.executable, *profiler, "-m", "automation", "dispatch", "--once"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=PROCESS_TIMEOUT_S,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"dispatcher exited with {completed.returncode}:\n{tail(log)}")
    return ProcessTimes(time.monotonic() - started, children_cpu() - cpu)


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time (this process only)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {seconds:.0f} s")


# -------------------------------------------------------------- figures from calls


def accepted_calls(fake: FakeAmoCRM) -> list[RecordedCall]:
    return [call for call in fake.salesbot_calls() if call.accepted]


def steady_rate(calls: Sequence[RecordedCall]) -> float:
    """Launches per second from the first to the last accepted call, as the fake saw
    them: the launches of every call after the first over the time between them."""
    if len(calls) < 2:
        return 0.0
    span = calls[-1].monotonic - calls[0].monotonic
    return sum(len(call.body) for call in calls[1:]) / span if span > 0 else 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; `fraction` in (0, 1]."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def check_all_sent_once(sessions: sessionmaker[Session], fake: FakeAmoCRM, count: int) -> None:
    """Every launch `sent`, and each reached the fake exactly once."""
    counts = status_counts(sessions)
    launched = [entity for _, entity, _ in fake.launches()]
    if counts != {"sent": count} or len(launched) != count or len(set(launched)) != count:
        raise RuntimeError(
            f"expected {count} launches sent once each; database {counts}, "
            f"fake launched {len(launched)} ({len(set(launched))} distinct)"
        )


# ------------------------------------------------------------------ 1. the drain


def measure_drain(database: str, url: str, workdir: Path, launches: int) -> list[Row]:
    """One dispatcher process drains a backlog with no rate limit."""
    with session_factory(url) as sessions:
        add_launches(sessions, launches)
        with FakeAmoCRM() as fake:
            env = dispatcher_env(url, workdir / "rules.yaml", fake, DRAIN_MAX_RPS)
            times = run_once(env, workdir / f"drain-{database}.log")
            check_all_sent_once(sessions, fake, launches)
            calls = accepted_calls(fake)
    rate = steady_rate(calls)
    say(
        f"  drain {database}: {launches:,} launches in {len(calls)} calls, "
        f"{calls[-1].monotonic - calls[0].monotonic:.2f} s first→last call, "
        f"process wall {times.wall:.2f} s, CPU {times.cpu:.2f} s"
    )
    return [
        Row(
            "1 drain",
            database,
            "launches/s (first→last call)",
            rate,
            "/s",
            DRAIN_TARGET_PER_S[database],
        ),
        Row(
            "1 drain",
            database,
            "dispatcher CPU per 1,000 launches (incl. start)",
            times.cpu / launches * 1000 * 1000,
            "ms",
        ),
        Row("1 drain", database, "launches/s incl. process start", launches / times.wall, "/s"),
        Row(
            "1 drain",
            database,
            "launches per dispatcher CPU-s (incl. start)",
            launches / times.cpu,
            "/s",
        ),
    ]


def profile_drain(url: str, workdir: Path, launches: int, top: int = 25) -> None:
    """The drain of measurement 1 on SQLite, with the dispatcher process under cProfile
    (its main thread: the heartbeat thread is not profiled)."""
    output = workdir / "drain.prof"
    with session_factory(url) as sessions:
        add_launches(sessions, launches)
        with FakeAmoCRM() as fake:
            env = dispatcher_env(url, workdir / "rules.yaml", fake, DRAIN_MAX_RPS)
            times = run_once(env, workdir / "drain-profiled.log", profile=output)
            check_all_sent_once(sessions, fake, launches)
            rate = steady_rate(accepted_calls(fake))
    say(
        f"\ncProfile of `automation dispatch --once` draining {launches:,} launches on SQLite: "
        f"{rate:,.0f} launches/s under the profiler, process wall {times.wall:.2f} s"
    )
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(str(output), stream=out).sort_stats(order)
        # Cumulative: only our own functions, not click and runpy around them.
        stats.print_stats(*(["/automation/"] if order == "cumulative" else []), top)
        say(out.getvalue().split("\n\n", 1)[-1].rstrip())


# -------------------------------------------------------------- 2. paced at 7 req/s


def measure_paced(database: str, url: str, workdir: Path, launches: int) -> list[Row]:
    """One dispatcher process under amoCRM's limit of 7 requests a second."""
    with session_factory(url) as sessions:
        add_launches(sessions, launches)
        with FakeAmoCRM() as fake:
            fake.limit_rps(PACED_RPS)
            env = dispatcher_env(url, workdir / "rules.yaml", fake, PACED_RPS)
            run_once(env, workdir / f"paced-{database}.log")
            check_all_sent_once(sessions, fake, launches)
            every = fake.salesbot_calls()
            calls = [call for call in every if call.accepted]
            peak = fake.max_requests_in_any_window(1.0)
    rate = steady_rate(calls)
    rejected = sum(call.status == 429 for call in every)
    mean_batch = sum(len(call.body) for call in calls) / len(calls)
    say(
        f"  paced {database}: {len(calls)} accepted calls over "
        f"{calls[-1].monotonic - calls[0].monotonic:.2f} s, {rejected} × 429, "
        f"at most {peak} requests in any 1 s"
    )
    return [
        Row("2 paced 7/s", database, "launches/s (first→last call)", rate, "/s"),
        Row(
            "2 paced 7/s",
            database,
            f"fraction of {PACED_CEILING_PER_S:.0f}/s ceiling",
            rate / PACED_CEILING_PER_S,
            target=PACED_TARGET_FRACTION,
        ),
        Row("2 paced 7/s", database, "429 answers", rejected, target=0, kind="max"),
        Row("2 paced 7/s", database, "mean batch size", mean_batch, "launches"),
        Row("2 paced 7/s", database, "most requests in any 1 s", peak),
    ]


# --------------------------------------------------- 3. webhook → API call latency


@dataclass(frozen=True)
class Posted:
    lead_id: int
    sent: float
    replied: float
    status: int


class WebhookSender:
    """Posts status-change webhooks for distinct leads on a fixed schedule.

    Each post runs on a small thread pool so a slow answer does not delay the next
    send; `sent` is read just before the request leaves.
    """

    def __init__(self, url: str, threads: int = 8) -> None:
        self.url = url
        self.template = STATUS_WEBHOOK.read_text(encoding="utf-8").strip()
        if FIXTURE_LEAD_FIELD not in self.template:
            raise RuntimeError(f"{STATUS_WEBHOOK} no longer holds {FIXTURE_LEAD_FIELD}")
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")

    def body(self, lead_id: int) -> bytes:
        field = FIXTURE_LEAD_FIELD.rsplit("=", 1)[0]
        return self.template.replace(FIXTURE_LEAD_FIELD, f"{field}={lead_id}").encode()

    def post(self, lead_id: int) -> Posted:
        session: requests.Session | None = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.trust_env = False
        body = self.body(lead_id)
        sent = time.monotonic()
        answer = session.post(
            self.url,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        return Posted(lead_id, sent, time.monotonic(), answer.status_code)

    def run(self, lead_ids: Sequence[int], rate: float) -> list[Posted]:
        start = time.monotonic() + 0.05
        futures: list[Future[Posted]] = []
        for index, lead_id in enumerate(lead_ids):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(self.post, lead_id))
        return [future.result(timeout=30) for future in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def first_arrivals(fake: FakeAmoCRM) -> dict[int, float]:
    """When the fake first accepted a call carrying each entity id."""
    arrivals: dict[int, float] = {}
    for call in accepted_calls(fake):
        for task in call.body:
            arrivals.setdefault(int(task["entity_id"]), call.monotonic)
    return arrivals


def wait_healthy(url: str, processes: Sequence[subprocess.Popen[bytes]], seconds: float) -> None:
    def healthy() -> bool:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, seconds, "web server healthy")


def dispatcher_registered(url: str) -> Callable[[], bool]:
    def registered() -> bool:
        with session_factory(url) as sessions, sessions() as session:
            live = select(func.count()).where(DispatcherRow.stopped_at.is_(None))
            return bool(session.execute(live).scalar())

    return registered


def measure_latency(database: str, url: str, workdir: Path) -> list[Row]:
    """gunicorn + `automation dispatch` as processes; webhooks at a steady rate."""
    rules_file = workdir / "rules.yaml"
    bind = f"127.0.0.1:{free_port()}"
    base = f"http://{bind}"
    processes: list[subprocess.Popen[bytes]] = []
    with FakeAmoCRM() as fake, log_files(workdir, database) as (web_log, dispatch_log):
        fake.limit_rps(PACED_RPS)
        try:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "automation", "dispatch"],
                    cwd=ROOT,
                    env=dispatcher_env(url, rules_file, fake, PACED_RPS),
                    stdout=dispatch_log,
                    stderr=subprocess.STDOUT,
                )
            )
            web_env = process_env(
                DATABASE_URL=url, RULES_FILE=str(rules_file), WEBHOOK_SECRET=WEBHOOK_SECRET
            )
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-w", "2", "-b", bind, "wsgi:app"],
                    cwd=ROOT,
                    env=web_env,
                    stdout=web_log,
                    stderr=subprocess.STDOUT,
                )
            )
            wait_healthy(base, processes, 30)
            wait_until(dispatcher_registered(url), 30, "dispatcher registered")
            sender = WebhookSender(f"{base}/webhooks/amocrm/{WEBHOOK_SECRET}")
            try:
                return _timed_webhooks(database, fake, sender)
            finally:
                sender.close()
        finally:
            for process in reversed(processes):
                stop_process(process)


@contextmanager
def log_files(workdir: Path, database: str) -> Iterator[tuple[io.BufferedWriter, ...]]:
    with (
        (workdir / f"latency-web-{database}.log").open("wb") as web,
        (workdir / f"latency-dispatch-{database}.log").open("wb") as dispatch,
    ):
        yield web, dispatch


def _timed_webhooks(database: str, fake: FakeAmoCRM, sender: WebhookSender) -> list[Row]:
    warmup = [FIRST_LEAD_ID - 1 - i for i in range(WEBHOOK_WARMUP)]
    sender.run(warmup, WEBHOOK_RATE)
    wait_until(lambda: set(warmup) <= first_arrivals(fake).keys(), 30, "warm-up launches")

    count = int(WEBHOOK_RATE * WEBHOOK_SECONDS)
    leads = [FIRST_LEAD_ID + i for i in range(count)]
    posted = sender.run(leads, WEBHOOK_RATE)
    refused = [p for p in posted if p.status != 200]
    if refused:
        raise RuntimeError(f"{len(refused)} webhooks answered {refused[0].status}")
    wait_until(lambda: set(leads) <= first_arrivals(fake).keys(), 30, "all launches at the fake")

    arrivals = first_arrivals(fake)
    latencies = [arrivals[p.lead_id] - p.sent for p in posted]
    replies = [p.replied - p.sent for p in posted]
    offered = (count - 1) / (posted[-1].sent - posted[0].sent)
    calls = [
        c for c in accepted_calls(fake) if any(t["entity_id"] >= FIRST_LEAD_ID for t in c.body)
    ]
    rejected = sum(call.status == 429 for call in fake.salesbot_calls())
    call_rate = (len(calls) - 1) / (calls[-1].monotonic - calls[0].monotonic)
    say(
        f"  latency {database}: {count} webhooks at {offered:.1f}/s → {len(calls)} calls "
        f"(mean batch {count / len(calls):.1f}, largest {max(len(c.body) for c in calls)}), "
        f"{rejected} × 429"
    )
    row = "3 webhook→API"
    return [
        Row(row, database, "webhooks/s offered", offered, "/s"),
        Row(row, database, "latency p50", percentile(latencies, 0.50), "s"),
        Row(
            row,
            database,
            "latency p99",
            percentile(latencies, 0.99),
            "s",
            LATENCY_P99_TARGET_S,
            "max",
        ),
        Row(row, database, "latency max", max(latencies), "s"),
        Row(row, database, "webhook 200 reply p99", percentile(replies, 0.99), "s"),
        Row(row, database, f"API calls/s (budget {PACED_RPS})", call_rate, "/s"),
        Row(row, database, "429 answers", rejected, target=0, kind="max"),
    ]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TEST_DATABASE_URL"),
        help="PostgreSQL server URL (default: TEST_DATABASE_URL); omitted: SQLite only",
    )
    parser.add_argument(
        "--only", choices=["drain", "paced", "latency"], action="append", help="repeatable"
    )
    parser.add_argument("--backlog", type=int, default=DRAIN_LAUNCHES, help="drain launches")
    parser.add_argument("--profile", action="store_true", help="cProfile a drain on SQLite")
    return parser.parse_args(argv)


def run_measurement(name: str, database: str, url: str, workdir: Path, backlog: int) -> list[Row]:
    """One measurement; a failure becomes a MISSED row, and the others still run."""
    try:
        if name == "drain":
            return measure_drain(database, url, workdir, backlog)
        if name == "paced":
            return measure_paced(database, url, workdir, PACED_LAUNCHES)
        return measure_latency(database, url, workdir)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        say(f"  {name} on {database} FAILED: {exc}")
        return [Row(name, database, "failed (see above)", float("nan"), target=1.0)]


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} (1 min) {five:.2f} (5 min)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = [name for name in ("drain", "paced", "latency") if name in (args.only or [name])]
    databases = ["sqlite", "postgresql"] if args.postgres else ["sqlite"]
    if not args.postgres:
        say("no --postgres and no TEST_DATABASE_URL: PostgreSQL rows skipped")
    say(f"machine: {machine_load()} (other load skews the rates)")
    rows: list[Row] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    try:
        (workdir / "rules.yaml").write_text(RULES)
        for database in databases:
            for name in only:
                say(f"{name} on {database} …")
                with fresh_database(database, workdir, args.postgres) as url:
                    rows += run_measurement(name, database, url, workdir, args.backlog)
        if args.profile:
            with fresh_database("sqlite", workdir, None) as url:
                profile_drain(url, workdir, args.backlog)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"\nmachine after the runs: {machine_load()}\n")
    print_table(rows)
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
