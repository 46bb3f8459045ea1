"""A chaos run of our own (issue 17): break the server's processes under load, send it
hostile bodies, then check what reached a fake amoCRM against what the server said.

Per database (SQLite, and PostgreSQL with `--postgres URL` or TEST_DATABASE_URL):

1. chaos:   `automation serve --no-dispatcher` (2 gthread workers) takes webhooks
            posted continuously, each naming 1 to 3 new leads, while its workers and
            its master are SIGKILLed (the master is started again on the same port).
            `automation dispatch` processes (2 on SQLite, where one waits for the
            other; 3 on PostgreSQL) send the launches to a fake amoCRM, which answers
            some calls with a 400 naming no item (the dispatcher bisects), a 503, or
            no answer before or after launching the tasks. Dispatchers are SIGKILLed,
            SIGSTOPped for less than DISPATCHER_DEAD_AFTER and for more, and SIGSTOPped
            right after a 400, while they wait for a slot to resend the halves.
2. hostile: no more kills; good webhooks keep flowing while clients upload slowly
            (headers, 10 bytes of 1,000, then silence), trickle a byte a second, cut
            bodies short of their Content-Length, and send malformed framing and
            bodies. Every good webhook's latency is recorded.
3. drain:   the faults stop; the dispatchers send what is left.

The fake amoCRM is a separate process (`tests/fake_amocrm.py`) that appends every
salesbot call it receives, with its tasks, to a journal file. The checks compare that
journal and the load generator's record of every 200 with the database:

- 0 acknowledged webhooks lost: every webhook answered 200 has its delivery and one
  launch per lead stored, and every launch ends `sent`, `failed` or `uncertain`;
- 0 tasks received twice (no operator retries `uncertain` launches here);
- every `sent` launch received exactly once, no `failed` launch received at all, no
  task received that the database does not know;
- at most AMOCRM_MAX_RPS salesbot calls arrived in any one second;
- every hostile request answered 4xx (never 2xx, 5xx or nothing), nothing of it
  stored; every good webhook of the hostile phase answered 200 (in the full run also
  within `--max-latency`, amoCRM's 2 s).

It prints the figures and exits 1 on any violation. Run from the repository root:

    python bench/chaos.py [--short] [--postgres URL] [--seed N] [--keep]

`--short` (about 40 s per database) is what CI runs (tests/test_chaos.py); the full run
takes about 3 minutes per database. The machine is usually shared: the latencies
printed are the machine's as much as the server's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, make_url, select, text  # noqa: E402

from automation.store.database import make_engine, upgrade  # noqa: E402
from automation.store.models import ApiCall, Delivery, DeliveryEntity, Launch  # noqa: E402
from automation.store.states import LaunchStatus  # noqa: E402
from tests.fake_amocrm import ACCESS_TOKEN, FakeAmoCRM, max_in_window  # noqa: E402
from tests.gunicorn import BIN, Server, children_of, free_port, serve, wait_gone  # noqa: E402

SECRET = "chaos-secret-0123456789"
PATH = f"/webhooks/amocrm/{SECRET}/"
FORM = "application/x-www-form-urlencoded"
BOT_ID = 101
STATUS_ID = 59936202
STAMP = 1727700894
RULES = f"""\
version: 1
rules:
  - name: qualified
    on: lead.status_changed
    when: {{status_id: {STATUS_ID}}}
    launch: {{bot_id: {BOT_ID}, entity: lead}}
"""
#: Lead ids of good webhooks start here; those of hostile bodies at HOSTILE_LEADS.
GOOD_LEADS = 10_000_000
HOSTILE_LEADS = 90_000_000
TERMINAL = {"sent", "failed", "uncertain"}
OPEN = (LaunchStatus.PENDING, LaunchStatus.SENDING)


@dataclass(frozen=True)
class Plan:
    """How long and how hard; `--short` is the same run, shorter."""

    chaos_seconds: float = 60.0
    hostile_seconds: float = 20.0
    drain_seconds: float = 120.0
    webhooks_per_second: float = 40.0
    max_rps: int = 3
    dead_after: float = 2.0
    web_workers: int = 2
    web_kill_every: float = 2.5
    dispatcher_action_every: float = 2.0
    fault_every: float = 1.0
    slow_clients: int = 4
    tricklers: int = 2
    max_latency: float | None = 2.0


FULL = Plan()
SHORT = replace(FULL, chaos_seconds=16.0, hostile_seconds=7.0, drain_seconds=60.0, max_latency=None)


# ------------------------------------------------------------------ the fake amoCRM


def fake_main(journal: Path, url_file: Path, fault_every: float, seed: int) -> None:
    """The fake amoCRM process: serve, inject a fault now and then, until SIGTERM.

    A fault waits for the next salesbot call; a new one is queued only once a call
    has taken the last. SIGUSR1 ends the faults (the drain).
    """
    fake = FakeAmoCRM(journal=journal).start()
    stopping, faults = threading.Event(), threading.Event()
    faults.set()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGUSR1, lambda *_: faults.clear())
    partial = url_file.with_suffix(".partial")
    partial.write_text(fake.url)
    partial.rename(url_file)
    rng, seen = random.Random(seed), -1
    while not stopping.wait(rng.uniform(0.5, 1.5) * fault_every):
        calls = len(fake.salesbot_calls())
        if faults.is_set() and calls > seen:
            seen = calls
            inject_fault(fake, rng)
    fake.stop()


def inject_fault(fake: FakeAmoCRM, rng: random.Random) -> None:
    draw = rng.random()
    if draw < 0.55:
        fake.fail_next(1, status=400)  # names no item: the dispatcher bisects
    elif draw < 0.70:
        fake.fail_next(1, status=503)  # retried after a shared hold
    elif draw < 0.85:
        fake.drop_next(1, after_processing=True)  # launched, answer lost: uncertain
    else:
        fake.drop_next(1)  # not launched, no answer: uncertain too


@dataclass(frozen=True)
class JournalCall:
    monotonic: float
    status: int | None
    accepted: bool
    dropped: bool
    tasks: list[dict[str, int]]


def read_journal(path: Path) -> list[JournalCall]:
    calls = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        calls.append(
            JournalCall(
                entry["monotonic"],
                entry["status"],
                entry["accepted"],
                entry["dropped"],
                entry["tasks"] or [],
            )
        )
    return calls


# ------------------------------------------------------------------ processes


class Processes:
    """Every process this run started, so that none outlives it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.started: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[int, Path] = {}
        self.closed = False
        self._names: Counter[str] = Counter()
        self._lock = threading.Lock()

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self.closed:
                raise RuntimeError(f"not starting {name}: the run is over")
            self._names[name] += 1
            output = self.work / f"{name}-{self._names[name]}.log"
            with output.open("wb") as sink:
                process = subprocess.Popen(
                    list(argv), cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
                )
            self.started.append(process)
            self.outputs[process.pid] = output
            return process

    def logs(self, name: str) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.work.glob(f"{name}-*.log"))
        )

    def stop_all(self) -> None:
        with self._lock:
            self.closed = True
        for process in self.started:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.terminate()
        for process in self.started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


class Web:
    """`automation serve --no-dispatcher` on one port, started again after its master
    is killed."""

    def __init__(self, processes: Processes, env: dict[str, str], workers: int) -> None:
        self.processes, self.env, self.workers = processes, env, workers
        self.port = free_port()
        self.server: Server | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        argv = [part.replace("{port}", str(self.port)) for part in serve("--workers", "2")]
        argv[argv.index("--workers") + 1] = str(self.workers)
        for _ in range(3):  # the port may still be held for a moment by the old workers
            process = self.processes.spawn("web", argv, self.env)
            server = Server(process, self.port, self.processes.outputs[process.pid])
            try:
                server.wait_healthy(60)
            except AssertionError:
                process.kill()
                process.wait(5)
                time.sleep(1)
                continue
            self.server = server
            return
        raise RuntimeError(f"automation serve did not start; see {self.processes.work}/web-*.log")

    def kill_worker(self, rng: random.Random) -> bool:
        with self.lock:
            assert self.server is not None
            workers = children_of(self.server.process.pid)
            if not workers:
                return False
            os.kill(rng.choice(workers), signal.SIGKILL)
            return True

    def kill_master(self) -> None:
        """SIGKILL the master; its workers notice and exit; start a new server."""
        with self.lock:
            assert self.server is not None
            master = self.server.process
            workers = children_of(master.pid)
            master.kill()
            master.wait(10)
            if not wait_gone(workers, 15):
                for pid in workers:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                wait_gone(workers, 5)
            self.start()


class Dispatchers:
    """`automation dispatch` processes in slots; a killed one is started again."""

    def __init__(self, processes: Processes, env: dict[str, str], count: int) -> None:
        self.processes, self.env = processes, env
        self.slots: list[subprocess.Popen[bytes]] = []
        self.lock = threading.Lock()
        #: pid → monotonic time of its SIGCONT, while stopped.
        self.stopped: dict[int, float] = {}
        for _ in range(count):
            self.slots.append(self._spawn())

    def _spawn(self) -> subprocess.Popen[bytes]:
        return self.processes.spawn("dispatch", [str(BIN / "automation"), "dispatch"], self.env)

    def running(self) -> list[subprocess.Popen[bytes]]:
        """Live and not stopped: those a new action may hit."""
        with self.lock:
            return [p for p in self.slots if p.poll() is None and p.pid not in self.stopped]

    def by_pid(self, pid: int) -> subprocess.Popen[bytes] | None:
        return next((p for p in self.running() if p.pid == pid), None)

    def kill(self, process: subprocess.Popen[bytes], restart_after: float) -> None:
        process.kill()
        process.wait(10)

        def restart() -> None:
            with self.lock, suppress(RuntimeError):  # the run ended meanwhile
                self.slots[self.slots.index(process)] = self._spawn()

        timer = threading.Timer(restart_after, restart)
        timer.daemon = True
        timer.start()

    def pause(self, process: subprocess.Popen[bytes], seconds: float) -> bool:
        """SIGSTOP now, SIGCONT after `seconds` (from a timer thread)."""
        with self.lock:
            if process.pid in self.stopped or process.poll() is not None:
                return False
            process.send_signal(signal.SIGSTOP)
            self.stopped[process.pid] = time.monotonic() + seconds

        def resume() -> None:
            with self.lock:
                if self.stopped.pop(process.pid, None) is not None and process.poll() is None:
                    process.send_signal(signal.SIGCONT)

        timer = threading.Timer(seconds, resume)
        timer.daemon = True
        timer.start()
        return True

    def resume_all(self) -> None:
        with self.lock:
            for process in self.slots:
                if process.pid in self.stopped and process.poll() is None:
                    process.send_signal(signal.SIGCONT)
            self.stopped.clear()


# ------------------------------------------------------------------ HTTP clients


def status_body(leads: Sequence[int]) -> bytes:
    """A `leads[status]` webhook moving these leads to the stage the rule watches;
    the same body posted again is the same change (amoCRM's retry)."""
    fields: dict[str, object] = {"account[subdomain]": "chaos", "account[id]": 30112233}
    for index, lead in enumerate(leads):
        item = f"leads[status][{index}]"
        fields |= {
            f"{item}[id]": lead,
            f"{item}[status_id]": STATUS_ID,
            f"{item}[old_status_id]": 59936198,
            f"{item}[pipeline_id]": 7173574,
            f"{item}[last_modified]": STAMP,
            f"{item}[updated_at]": STAMP,
            f"{item}[account_id]": 30112233,
        }
    return urlencode(fields).encode()


def post(port: int, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """POST a webhook on a fresh connection: (status, answer body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", PATH, body=body, headers={"Content-Type": FORM})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def raw(port: int, data: bytes, *, then: Callable[[socket.socket], None] | None = None) -> int:
    """Send bytes as they are, half-close (unless `then` says what else to do), read
    the answer: its status, or 0 when the server closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if then is None:
            sock.shutdown(socket.SHUT_WR)
        else:
            then(sock)
        answer = b""
        with suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    if not answer.startswith(b"HTTP/"):
        return 0
    return int(answer.split(b" ", 2)[1])


def request_head(length: int | str, content_type: str = FORM, extra: str = "") -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: chaos\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


@dataclass(frozen=True)
class Ack:
    """A webhook answered 200, as the load generator saw it."""

    leads: tuple[int, ...]
    delivery_id: int
    launches: int


class Leads:
    """Fresh lead ids, never repeated within a run."""

    def __init__(self, first: int) -> None:
        self._next, self._lock = first, threading.Lock()

    def take(self, count: int) -> tuple[int, ...]:
        with self._lock:
            first, self._next = self._next, self._next + count
        return tuple(range(first, first + count))


@dataclass
class Tally:
    """What the load generator and the hostile clients got, thread-safe enough."""

    acks: list[Ack] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    hostile: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, phase: str, what: str, ack: Ack | None = None) -> None:
        with self.lock:
            self.answers[f"{phase}: {what}"] += 1
            if ack is not None:
                self.acks.append(ack)

    def hostile_answer(self, kind: str, status: int) -> None:
        with self.lock:
            self.hostile[f"{kind} -> {status or 'no answer'}"] += 1


def post_good(web: Web, leads: Leads, tally: Tally, rng: random.Random, phase: str) -> float | None:
    """Post one webhook of 1-3 new leads; resend the same body after a failure, as
    amoCRM does. Returns the latency of the answer that counted, if any."""
    ids = leads.take(rng.randint(1, 3))
    body = status_body(ids)
    for _ in range(3):
        started = time.monotonic()
        try:
            status, answer = post(web.port, body)
        except OSError as exc:
            tally.answered(phase, f"no answer ({type(exc).__name__})")
            time.sleep(0.3)
            continue
        latency = time.monotonic() - started
        if status == 200:
            document = json.loads(answer)
            tally.answered(phase, "200", Ack(ids, document["delivery_id"], document["launches"]))
            return latency
        tally.answered(phase, str(status))
        if status < 500:
            return latency  # refused: a good webhook must never be (checked later)
        time.sleep(0.3)
    return None


# ------------------------------------------------------------------ the chaos


@dataclass
class Chaos:
    """What broke, by kind."""

    kills: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str) -> None:
        with self.lock:
            self.kills[kind] += 1


def load_loop(web: Web, leads: Leads, tally: Tally, rate: float, until: float, seed: int) -> None:
    """One of four posters, each at a quarter of the rate."""
    rng = random.Random(seed)
    interval = 4 / rate
    while time.monotonic() < until:
        started = time.monotonic()
        post_good(web, leads, tally, rng, "chaos")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def web_chaos(web: Web, chaos: Chaos, plan: Plan, until: float, rng: random.Random) -> None:
    """SIGKILL a worker now and then; every fourth time the master instead."""
    turn = 0
    while time.monotonic() < until:
        time.sleep(rng.uniform(0.5, 1.5) * plan.web_kill_every)
        turn += 1
        if turn % 4 == 0:
            web.kill_master()
            chaos.count("web master SIGKILL (server started again)")
        elif web.kill_worker(rng):
            chaos.count("web worker SIGKILL")


def dispatcher_chaos(
    fleet: Dispatchers, chaos: Chaos, plan: Plan, until: float, rng: random.Random
) -> None:
    """At random: SIGKILL (started again soon), or SIGSTOP shorter or longer than
    DISPATCHER_DEAD_AFTER."""
    while time.monotonic() < until:
        time.sleep(rng.uniform(0.5, 1.5) * plan.dispatcher_action_every)
        running = fleet.running()
        if not running:
            continue
        victim, draw = rng.choice(running), rng.random()
        if draw < 0.35:
            fleet.kill(victim, restart_after=rng.uniform(0.3, 1.5))
            chaos.count("dispatcher SIGKILL")
        elif draw < 0.7:
            fleet.pause(victim, plan.dead_after + rng.uniform(0.3, 1.5))
            chaos.count("dispatcher SIGSTOP > DEAD_AFTER (at random)")
        else:
            fleet.pause(victim, rng.uniform(0.1, plan.dead_after / 2))
            chaos.count("dispatcher SIGSTOP < DEAD_AFTER")


def bisect_sniper(
    fleet: Dispatchers, chaos: Chaos, plan: Plan, url: str, until: float, rng: random.Random
) -> None:
    """SIGSTOP the dispatcher that just got a 400 naming no item, past DEAD_AFTER:
    it is about to wait for a request slot to resend the halves (issue 17's case).
    The database only says who got the 400; nothing is checked against it here."""
    engine = make_engine(url)
    last = 0
    try:
        while time.monotonic() < until:
            with engine.connect() as connection:
                rows = connection.execute(
                    select(ApiCall.id, ApiCall.dispatcher)
                    .where(ApiCall.id > last, ApiCall.status_code == 400)
                    .order_by(ApiCall.id)
                ).all()
            for call_id, dispatcher in rows:
                last = call_id
                victim = fleet.by_pid(int(dispatcher.split(":")[-2]))
                stall = plan.dead_after + rng.uniform(0.5, 1.5)
                if victim is not None and fleet.pause(victim, stall):
                    chaos.count("dispatcher SIGSTOP > DEAD_AFTER right after a 400 (bisect)")
            time.sleep(0.02)
    finally:
        engine.dispose()


# ------------------------------------------------------------------ hostile bodies


def slow_upload(web: Web, tally: Tally, until: float) -> None:
    """Headers and 10 of 1,000 bytes, then silence: the server should answer 408."""
    while time.monotonic() < until:
        status = raw(web.port, request_head(1000) + b"account%5Bid%5D=1", then=lambda s: None)
        tally.hostile_answer("slow upload (10 of 1000 bytes, then silence)", status)


def trickle(web: Web, leads: Leads, tally: Tally, until: float) -> None:
    """A byte a second of a real webhook until the phase ends, then close."""
    body = status_body(leads.take(1))

    def drip(sock: socket.socket) -> None:
        for byte in body:
            if time.monotonic() >= until:
                break
            sock.sendall(bytes([byte]))
            time.sleep(1.0)
        sock.shutdown(socket.SHUT_WR)

    while time.monotonic() < until:
        status = raw(web.port, request_head(len(body)), then=drip)
        tally.hostile_answer("trickle (a byte a second, closed at the end)", status)


def malformed_requests(leads: Leads) -> dict[str, bytes]:
    """One of each kind; a new lead id each time, to show none of them is stored."""
    body = status_body(leads.take(2))
    half = body[: len(body) // 2]
    lead = leads.take(1)[0]
    chunked = "Transfer-Encoding: chunked\r\n"
    head = f"POST {PATH} HTTP/1.1\r\nHost: chaos\r\nContent-Type: {FORM}\r\n".encode()
    return {
        "cut short of its Content-Length": request_head(len(body)) + half,
        "invalid chunk size": head + chunked.encode() + b"\r\nzz\r\n" + half + b"\r\n0\r\n\r\n",
        "chunked, cut short": head + chunked.encode() + b"\r\n%x\r\n" % len(body) + half,
        "negative Content-Length": request_head(-5) + body,
        "two Content-Lengths": request_head(len(body), extra="Content-Length: 3\r\n") + body,
        "NUL in a header": request_head(len(body), extra="X-Chaos: a\x00b\r\n") + body,
        "garbled request line": b"POST\x01 " + PATH.encode() + b" HTTP/1.1\r\n\r\n",
        "not JSON": request_head(9, "application/json") + b"{not json",
        "NUL in the body": request_head(len(body) + 3) + body + b"%00",
        "id beyond 64 bits": _form(f"leads[status][0][id]={2**70 + lead}"),
        "not UTF-8": _form_bytes(b"account[id]=1&leads[status][0][name]=\xff\xfe\xfd"),
        "text/plain": request_head(len(body), "text/plain") + body,
        "over MAX_BODY_BYTES": request_head(50_000_000) + half,
        "form of garbage": _form(f"%%%[[[]]]&&={lead}&leads[status]=x"),
    }


def _form(body: str) -> bytes:
    return _form_bytes(body.encode())


def _form_bytes(data: bytes) -> bytes:
    return request_head(len(data)) + data


def malformed(web: Web, leads: Leads, tally: Tally, until: float) -> None:
    while time.monotonic() < until:
        for kind, data in malformed_requests(leads).items():
            tally.hostile_answer(kind, raw(web.port, data))
        time.sleep(0.2)


def good_flow(web: Web, leads: Leads, tally: Tally, until: float, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        latency = post_good(web, leads, tally, rng, "hostile")
        if latency is not None:
            with tally.lock:
                tally.latencies.append(latency)
        time.sleep(0.1)


# ------------------------------------------------------------------ one database


@dataclass
class Result:
    name: str
    figures: dict[str, Any]
    kills: Counter[str]
    violations: list[str]


def run_database(name: str, url: str, plan: Plan, work: Path, seed: int) -> Result:
    work.mkdir(parents=True)
    (work / "rules.yaml").write_text(RULES)
    processes = Processes(work)
    rng = random.Random(seed)
    if url.startswith("sqlite"):
        upgrade(url)
    try:
        fake, fake_url, journal = start_fake(processes, work, plan, seed)
        env = base_env(url, work)
        web = Web(processes, env, plan.web_workers)
        web.start()
        dispatch_env = env | dispatcher_settings(fake_url, plan)
        fleet = Dispatchers(processes, dispatch_env, 2 if name == "sqlite" else 3)
        tally, chaos, leads = Tally(), Chaos(), Leads(GOOD_LEADS)
        hostile_leads = Leads(HOSTILE_LEADS)
        say(f"[{name}] chaos for {plan.chaos_seconds:g}s (work dir {work})")
        chaos_phase(web, fleet, tally, chaos, leads, plan, url, rng)
        say(f"[{name}] hostile bodies for {plan.hostile_seconds:g}s")
        hostile_phase(web, tally, leads, hostile_leads, plan, rng)
        say(f"[{name}] draining")
        fake.send_signal(signal.SIGUSR1)  # no more faults
        drained = drain(url, plan.drain_seconds)
        dispatcher_log = processes.logs("dispatch")
    finally:
        processes.stop_all()
    calls = read_journal(journal)
    verdict = Check(url, plan, tally, calls, hostile_leads).run()
    verdict.figures |= {
        "drained in": f"{drained:.1f}s" if drained is not None else "no (timed out)",
        "takeovers noticed by the stalled dispatcher": dispatcher_log.count("registers anew"),
        "dispatchers declared dead": dispatcher_log.count("was declared dead by another"),
    }
    return Result(name, verdict.figures, chaos.kills, verdict.violations)


def start_fake(
    processes: Processes, work: Path, plan: Plan, seed: int
) -> tuple[subprocess.Popen[bytes], str, Path]:
    journal, url_file = work / "amocrm-journal.jsonl", work / "amocrm.url"
    argv = [sys.executable, __file__, "fake", str(journal), str(url_file)]
    argv += ["--fault-every", str(plan.fault_every), "--seed", str(seed)]
    process = processes.spawn("fake-amocrm", argv, dict(os.environ))
    deadline = time.monotonic() + 30
    while not url_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the fake amoCRM did not start; see {work}/fake-amocrm-1.log")
        time.sleep(0.05)
    return process, url_file.read_text(), journal


def base_env(url: str, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMOCRM_", "DATABASE_"))}
    env |= {"DATABASE_URL": url, "RULES_FILE": str(work / "rules.yaml")}
    return env | {"WEBHOOK_SECRET": SECRET, "TMPDIR": str(work)}


def dispatcher_settings(fake_url: str, plan: Plan) -> dict[str, str]:
    return {
        "AMOCRM_BASE_URL": fake_url,
        "AMOCRM_ACCESS_TOKEN": ACCESS_TOKEN,
        "AMOCRM_MAX_RPS": str(plan.max_rps),
        "DISPATCHER_DEAD_AFTER": str(plan.dead_after),
    }


def chaos_phase(
    web: Web,
    fleet: Dispatchers,
    tally: Tally,
    chaos: Chaos,
    leads: Leads,
    plan: Plan,
    url: str,
    rng: random.Random,
) -> None:
    until = time.monotonic() + plan.chaos_seconds
    threads = [
        threading.Thread(
            target=load_loop,
            args=(web, leads, tally, plan.webhooks_per_second, until, rng.random()),
        )
        for _ in range(4)
    ]
    threads += [
        threading.Thread(target=web_chaos, args=(web, chaos, plan, until, rng_of(rng))),
        threading.Thread(target=dispatcher_chaos, args=(fleet, chaos, plan, until, rng_of(rng))),
        threading.Thread(target=bisect_sniper, args=(fleet, chaos, plan, url, until, rng_of(rng))),
    ]
    run_all(threads)
    fleet.resume_all()
    time.sleep(0.5)
    fleet.resume_all()  # a timer that fired late, or a pause begun at the very end


def hostile_phase(
    web: Web, tally: Tally, leads: Leads, hostile: Leads, plan: Plan, rng: random.Random
) -> None:
    until = time.monotonic() + plan.hostile_seconds
    threads = [
        threading.Thread(target=slow_upload, args=(web, tally, until))
        for _ in range(plan.slow_clients)
    ]
    threads += [
        threading.Thread(target=trickle, args=(web, hostile, tally, until))
        for _ in range(plan.tricklers)
    ]
    threads += [threading.Thread(target=malformed, args=(web, hostile, tally, until))]
    threads += [
        threading.Thread(target=good_flow, args=(web, leads, tally, until, rng.random()))
        for _ in range(2)
    ]
    run_all(threads)


def rng_of(rng: random.Random) -> random.Random:
    return random.Random(rng.random())


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join()


def drain(url: str, seconds: float) -> float | None:
    """Seconds until no launch is `pending` or `sending`; None if that never came."""
    started = time.monotonic()
    engine = make_engine(url)
    try:
        while time.monotonic() - started < seconds:
            with engine.connect() as connection:
                open_ = connection.scalar(select(Launch.id).where(Launch.status.in_(OPEN)).limit(1))
            if open_ is None:
                return time.monotonic() - started
            time.sleep(0.5)
    finally:
        engine.dispose()
    return None


# ------------------------------------------------------------------ the checks


class Check:
    """The journal and the acknowledgements against the database."""

    def __init__(
        self, url: str, plan: Plan, tally: Tally, calls: list[JournalCall], hostile: Leads
    ) -> None:
        self.url, self.plan, self.tally, self.calls = url, plan, tally, calls
        self.hostile_first, self.hostile_next = HOSTILE_LEADS, hostile.take(1)[0]
        self.violations: list[str] = []
        self.figures: dict[str, Any] = {}

    def run(self) -> Check:
        launches, deliveries, hostile_stored = self._read_database()
        received = Counter(
            task["entity_id"] for call in self.calls if call.accepted for task in call.tasks
        )
        lost = self._lost(launches, deliveries)
        double = sorted(entity for entity, count in received.items() if count > 1)
        self._states(launches, received)
        self._rate()
        self._hostile(hostile_stored)
        self._refused_good()
        statuses = Counter(status for rows in launches.values() for status in rows)
        self.figures = {
            "webhooks acknowledged (200)": len(self.tally.acks),
            "webhook answers": dict(sorted(self.tally.answers.items())),
            "lost (acknowledged, not stored or launch missing)": lost,
            "launches by status": dict(sorted(statuses.items())),
            "tasks received by amoCRM": sum(received.values()),
            "double-sent (received more than once)": len(double),
            "salesbot calls by answer": self._calls_by_answer(),
            f"max calls in any 1 s (AMOCRM_MAX_RPS={self.plan.max_rps})": self._max_per_second(),
            **self._latency(),
            "hostile requests": dict(sorted(self.tally.hostile.items())),
        }
        if double:
            self.fail(f"{len(double)} leads received more than once by amoCRM: {double[:10]}")
        return self

    def fail(self, message: str) -> None:
        self.violations.append(message)

    def _read_database(self) -> tuple[dict[int, list[str]], set[int], int]:
        engine = make_engine(self.url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(select(Launch.entity_id, Launch.status)).all()
                deliveries = set(connection.scalars(select(Delivery.id)))
                hostile_stored = sum(
                    connection.scalar(select(func.count()).where(column >= self.hostile_first)) or 0
                    for column in (DeliveryEntity.entity_id, Launch.entity_id)
                )
        finally:
            engine.dispose()
        launches: dict[int, list[str]] = {}
        for entity, status in rows:
            launches.setdefault(entity, []).append(status.value)
        return launches, deliveries, hostile_stored

    def _lost(self, launches: dict[int, list[str]], deliveries: set[int]) -> int:
        lost = 0
        for ack in self.tally.acks:
            missing = [lead for lead in ack.leads if lead not in launches]
            if ack.delivery_id not in deliveries or missing:
                lost += 1
                self.fail(
                    f"webhook acknowledged as delivery {ack.delivery_id} (leads {ack.leads}) "
                    f"is not stored whole: delivery stored={ack.delivery_id in deliveries}, "
                    f"leads without a launch: {missing}"
                )
        return lost

    def _states(self, launches: dict[int, list[str]], received: Counter[int]) -> None:
        """Each launch in a terminal state that agrees with what amoCRM received."""
        for entity, statuses in sorted(launches.items()):
            count = received[entity]
            if len(statuses) > 1:
                self.fail(f"lead {entity}: {len(statuses)} launches stored ({statuses})")
            status = statuses[0]
            if status not in TERMINAL:
                self.fail(f"lead {entity}: still {status} after the drain")
            elif status == "sent" and count != 1:
                self.fail(f"lead {entity}: sent, but received {count} times by amoCRM")
            elif status == "failed" and count:
                self.fail(f"lead {entity}: failed, but received {count} times by amoCRM")
        for entity in sorted(set(received) - set(launches)):
            self.fail(f"amoCRM received lead {entity}, which no launch names")

    def _max_per_second(self) -> int:
        return max_in_window((call.monotonic for call in self.calls), 1.0)

    def _rate(self) -> None:
        most = self._max_per_second()
        if most > self.plan.max_rps:
            self.fail(f"{most} salesbot calls arrived within one second (max {self.plan.max_rps})")

    def _calls_by_answer(self) -> dict[str, int]:
        def kind(call: JournalCall) -> str:
            if call.dropped:
                return "dropped after launching" if call.accepted else "dropped unprocessed"
            return str(call.status)

        return dict(sorted(Counter(kind(call) for call in self.calls).items()))

    def _latency(self) -> dict[str, str]:
        latencies = sorted(self.tally.latencies)
        if not latencies:
            self.fail("no good webhook was answered during the hostile phase")
            return {}
        worst = latencies[-1]
        p50 = latencies[len(latencies) // 2]
        limit = self.plan.max_latency
        if limit is not None and worst > limit:
            self.fail(f"a good webhook took {worst:.2f}s during slow uploads (limit {limit:g}s)")
        checked = f"limit {limit:g}s" if limit is not None else "not checked in --short"
        return {
            "good webhooks during slow uploads": len(latencies),
            "latency during slow uploads": f"p50 {p50 * 1000:.0f} ms, worst "
            f"{worst * 1000:.0f} ms ({checked})",
        }

    def _refused_good(self) -> None:
        """A good webhook is never refused (4xx); in the hostile phase, with nothing
        killed, it is always stored (200)."""
        for what, count in self.tally.answers.items():
            phase, status = what.split(": ", 1)
            refused = status.isdigit() and 400 <= int(status) < 500
            if refused or (phase == "hostile" and status != "200"):
                self.fail(f"good webhooks answered {status} in the {phase} phase: {count}")

    def _hostile(self, stored: int) -> None:
        if stored:
            self.fail(f"{stored} rows of hostile requests' leads were stored")
        for what, count in self.tally.hostile.items():
            status = what.rsplit("-> ", 1)[1]
            if what.startswith("trickle") and status == "no answer":
                continue  # closed by us at the end of the phase
            if not (status.isdigit() and 400 <= int(status) < 500):
                self.fail(f"hostile request {what}: {count} times")


# ------------------------------------------------------------------ reporting, main


def say(message: str) -> None:
    print(message, flush=True)


def report(results: list[Result]) -> int:
    failed = False
    for result in results:
        say(f"\n== {result.name} ==")
        say("kills and stops:")
        for kind, count in sorted(result.kills.items()):
            say(f"  {count:5d}  {kind}")
        for name, value in result.figures.items():
            say(f"{name}: {value}")
        if result.violations:
            failed = True
            say(f"VIOLATIONS ({len(result.violations)}):")
            for violation in result.violations[:40]:
                say(f"  - {violation}")
        else:
            say("violations: none")
    say("\nFAILED" if failed else "\nPASSED")
    return 1 if failed else 0


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of `admin_url`, dropped afterwards."""
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin.url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI variant (~40 s a database)")
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    plan = SHORT if args.short else FULL
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    load = os.getloadavg()
    say(
        f"chaos seed={seed} load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"(a shared machine skews the latencies)"
    )
    results = []
    try:
        sqlite_url = f"sqlite:///{work / 'sqlite' / 'automation.db'}"
        results.append(run_database("sqlite", sqlite_url, plan, work / "sqlite", seed))
        if args.postgres:
            with postgres_database(args.postgres) as url:
                results.append(run_database("postgresql", url, plan, work / "pg", seed + 1))
        else:
            say("PostgreSQL skipped: no --postgres and no TEST_DATABASE_URL")
        return report(results)
    finally:
        if args.keep or any(result.violations for result in results):
            say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def fake_command() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("journal", type=Path)
    parser.add_argument("url_file", type=Path)
    parser.add_argument("--fault-every", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fake_main(args.journal, args.url_file, args.fault_every, args.seed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["fake"]:
        fake_command()
    else:
        sys.exit(main())
