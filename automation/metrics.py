"""`GET /metrics`: Prometheus counters from every process, gauges from the database.

Counters and histograms are counted where things happen: the webhook endpoint, the
dispatcher, the amoCRM client and the rules loader each make a one-line call into this
module. Under `automation serve` every gunicorn worker and the dispatcher child write
them to files in `PROMETHEUS_MULTIPROC_DIR`, and a scrape, whichever worker answers it,
adds them all up (prometheus-client's multiprocess mode). Without that variable (tests,
a single process) a scrape shows this process's own counts.

What is a fact about the shared database rather than about a process (the backlog, the
last dispatcher heartbeat, the last webhook) is read from it at scrape time: every web
host then tells the same story, and a restart resets nothing.

The metric names are an interface: dashboards and alerts depend on them.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from automation.store.models import LaunchStatus
from automation.store.vitals import Vitals, read_vitals
from automation.web.runtime import runtime

if TYPE_CHECKING:
    from automation.events.payloads import Payload
    from automation.rules.load import PlannedLaunch
    from automation.store.intake import Enqueued

log = logging.getLogger("automation.metrics")
bp = Blueprint("metrics", __name__)

#: This package's metrics, apart from prometheus-client's global registry.
REGISTRY = CollectorRegistry()
#: The view whose answers `automation_webhooks_total` counts.
WEBHOOK_ENDPOINT = "webhooks.receive"
#: Every answer the webhook endpoint gives, by name; pre-set to 0 so rates work at once.
WEBHOOK_OUTCOMES = (
    "accepted",
    "unrecognized",
    "bad_request",
    "forbidden",
    "not_found",
    "too_large",
    "unsupported",
    "unavailable",
    "error",
)
_STATUS_OUTCOMES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    415: "unsupported",
    503: "unavailable",
}
ENQUEUE_RESULTS = ("pending", "skipped", "duplicate")
SETTLED_STATUSES = (
    LaunchStatus.SENT,
    LaunchStatus.FAILED,
    LaunchStatus.UNCERTAIN,
    LaunchStatus.DRY_RUN,
)

WEBHOOKS = Counter(
    "automation_webhooks",
    "Webhook requests answered, by outcome: accepted or unrecognized (stored, 200), "
    "bad_request, forbidden, not_found (wrong secret), too_large, unsupported (content "
    "type), unavailable (503: not configured or not stored), error (500)",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_SECONDS = Histogram(
    "automation_webhook_duration_seconds",
    "Time to answer a webhook request (amoCRM gives up after 2 s)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
    registry=REGISTRY,
)
WEBHOOK_EVENTS = Counter(
    "automation_webhook_events",
    "Events in stored webhooks, by event type",
    ["type"],
    registry=REGISTRY,
)
LAUNCHES_MATCHED = Counter(
    "automation_launches_matched",
    "Launches the rules produced from stored webhooks, by rule, before de-duplication and cooldown",
    ["rule"],
    registry=REGISTRY,
)
LAUNCHES_ENQUEUED = Counter(
    "automation_launches_enqueued",
    "Launches the webhooks stored, by result: pending (to be sent), skipped (inside a "
    "cooldown), duplicate (stored before, not again)",
    ["result"],
    registry=REGISTRY,
)
LAUNCHES_SETTLED = Counter(
    "automation_launches_settled",
    "Launches the dispatcher brought to a final status: sent, failed, uncertain, dry_run",
    ["status"],
    registry=REGISTRY,
)
AMOCRM_REQUESTS = Counter(
    "automation_amocrm_requests",
    "Requests to amoCRM, by endpoint, HTTP status ('none': no answer) and outcome",
    ["endpoint", "status", "outcome"],
    registry=REGISTRY,
)
AMOCRM_SECONDS = Histogram(
    "automation_amocrm_request_duration_seconds",
    "Time from sending a request to amoCRM to its answer (or to giving up), by endpoint",
    ["endpoint"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
RULES_RELOAD_ERRORS = Counter(
    "automation_rules_reload_errors",
    "Times a process found the rules file broken (each new error once); the last good "
    "rules stay in use",
    registry=REGISTRY,
)
RULES_RELOAD_SUCCESS = Gauge(
    "automation_rules_last_reload_success",
    "1 when the rules file read last loaded, 0 when it was broken",
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)

for _outcome in WEBHOOK_OUTCOMES:
    WEBHOOKS.labels(_outcome)
for _result in ENQUEUE_RESULTS:
    LAUNCHES_ENQUEUED.labels(_result)
for _status in SETTLED_STATUSES:
    LAUNCHES_SETTLED.labels(_status.value)


# ------------------------------------------------------------------ counting calls


def webhook_stored(payload: Payload, planned: Sequence[PlannedLaunch], stored: Enqueued) -> None:
    """Count a committed delivery: its 200 outcome, its events and its launches."""
    _child(WEBHOOKS, stored.status.value).inc()
    for event_type, count in Tally(event.type for event in payload.events).items():
        _child(WEBHOOK_EVENTS, event_type).inc(count)
    for rule, count in Tally(launch.rule for launch in planned).items():
        _child(LAUNCHES_MATCHED, rule).inc(count)
    _inc(_child(LAUNCHES_ENQUEUED, "pending"), stored.launches)
    _inc(_child(LAUNCHES_ENQUEUED, "skipped"), stored.skipped)
    _inc(_child(LAUNCHES_ENQUEUED, "duplicate"), stored.duplicates)


@cache
def _child(metric: Counter, label: str) -> Counter:
    """`metric.labels(label)`, remembered: `labels` validates and locks on every call,
    and a webhook counts five of them. Label values are event types, rule names and
    fixed words, so the memo stays small."""
    return metric.labels(label)


def launches_settled(status: LaunchStatus, count: int) -> None:
    """Count launches the dispatcher moved to a final status."""
    _inc(LAUNCHES_SETTLED.labels(status.value), count)


def amocrm_call(endpoint: str, status: int | None, outcome: str, duration_ms: float) -> None:
    """Count one request to amoCRM and how long it took."""
    shown = "none" if status is None else str(status)
    AMOCRM_REQUESTS.labels(endpoint, shown, outcome).inc()
    AMOCRM_SECONDS.labels(endpoint).observe(duration_ms / 1000)


def rules_reloaded(success: bool) -> None:
    """The rules loader's hook: a file loaded (True) or was found broken (False)."""
    RULES_RELOAD_SUCCESS.set(1 if success else 0)
    if not success:
        RULES_RELOAD_ERRORS.inc()


def _inc(counter: Counter, amount: int) -> None:
    # Counting 0 would create a label series for nothing (and a file write).
    if amount:
        counter.inc(amount)


# --------------------------------------------------------- the webhook's answers


def _start_clock() -> None:
    if request.endpoint == WEBHOOK_ENDPOINT:
        g.webhook_started = time.perf_counter()


def _count_answer(response: Response) -> Response:
    """Count every webhook answer that is not a stored delivery (those count
    themselves in `webhook_stored`), including the 413 werkzeug raises mid-body."""
    started = g.pop("webhook_started", None)
    if started is None:
        return response
    WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    if response.status_code != 200:
        WEBHOOKS.labels(webhook_outcome(response.status_code)).inc()
    return response


def webhook_outcome(status_code: int) -> str:
    """The `outcome` label of a webhook answer that stored nothing (500 and any
    status the endpoint is not meant to give count as `error`)."""
    return _STATUS_OUTCOMES.get(status_code, "error")


# ------------------------------------------------------------- database gauges


class DatabaseCollector(Collector):
    """Gauges computed at scrape time from the database, so that they hold for every
    web host and dispatcher at once; a database that does not answer shows as
    `automation_database_up 0` instead of failing the scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        try:
            with self.sessions() as session:
                facts = read_vitals(session, now)
        except SQLAlchemyError as exc:
            log.warning("metrics: database not readable error=%s", type(exc).__name__)
            yield _gauge("automation_database_up", "1 when the database answered", 0)
            return
        yield _gauge("automation_database_up", "1 when the database answered", 1)
        yield from _facts_gauges(facts, now)


def _facts_gauges(facts: Vitals, now: datetime) -> Iterator[Metric]:
    oldest_age = (now - facts.oldest_due).total_seconds() if facts.oldest_due else 0.0
    yield _gauge(
        "automation_launches_due",
        "Pending launches whose time has come: the dispatcher's backlog",
        facts.due,
    )
    yield _gauge(
        "automation_launches_due_oldest_age_seconds",
        "How long the oldest due launch has waited since it became due (0: none due)",
        max(0.0, oldest_age),
    )
    yield _gauge(
        "automation_dispatcher_last_heartbeat_timestamp_seconds",
        "Unix time of the last heartbeat of any dispatcher (0: none ever ran)",
        _timestamp(facts.last_heartbeat),
    )
    yield _gauge(
        "automation_last_webhook_received_timestamp_seconds",
        "Unix time the last webhook was stored (0: none yet); alert when it falls silent",
        _timestamp(facts.last_webhook),
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment else 0.0


# ----------------------------------------------------------------------- scrape


class _ThisProcess(Collector):
    """This process's counters, for a scrape outside multiprocess mode."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def multiprocess_dir() -> str | None:
    """Where the processes of this server write their metrics, if they share them."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape_registry(sessions: sessionmaker[Session]) -> CollectorRegistry:
    """Everything one scrape shows: every process's counters (or this one's), and the
    database gauges."""
    registry = CollectorRegistry()
    if multiprocess_dir() is not None:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(DatabaseCollector(sessions))
    return registry


@bp.get("/metrics")
def scrape() -> Response:
    """Prometheus text (or OpenMetrics, when the scraper asks for it)."""
    state = runtime()
    state.rules.maybe_reload()  # a file broken since the last webhook shows up now
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(scrape_registry(state.sessions)), content_type=content_type)


def init_app(app: Flask) -> None:
    """Serve `/metrics`, count and time webhook answers, and follow rules reloads."""
    app.register_blueprint(bp)
    app.before_request(_start_clock)
    app.after_request(_count_answer)
    loader = app.extensions["automation"].rules
    loader.on_reload = rules_reloaded
    rules_reloaded(loader.error is None)
