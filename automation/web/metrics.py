"""`GET /metrics`: every process's counters and, read at scrape time, the database's
gauges; and the timing and counting of every webhook answer.

What is a fact about the shared database rather than about a process (the backlog, the
last dispatcher heartbeat, the last webhook) is read from it at scrape time: every web
host then tells the same story, and a restart resets nothing. The counters themselves
live in `automation.metrics`, which any process may import without Flask.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from automation.metrics import (
    REGISTRY,
    WEBHOOK_ENDPOINT,
    WEBHOOK_SECONDS,
    WEBHOOKS,
    rules_reloaded,
    webhook_outcome,
)
from automation.store.vitals import Vitals, read_vitals
from automation.web.runtime import runtime

log = logging.getLogger("automation.metrics")
bp = Blueprint("metrics", __name__)


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


def _stalled_seconds(facts: Vitals, now: datetime) -> float:
    """The longest a queued webhook has waited for a dispatcher or, held, for progress:
    an alert on it does not fire for a big body that is slow but moving, as one on the
    oldest's age (since arrival) does on PostgreSQL."""
    since = [moment for moment in (facts.unclaimed_since, facts.stalled_since) if moment]
    return max([0.0, *((now - moment).total_seconds() for moment in since)])


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
    queued_age = (now - facts.oldest_queued).total_seconds() if facts.oldest_queued else 0.0
    yield _gauge(
        "automation_deliveries_queued",
        "Large webhooks stored raw whose launches a dispatcher has not expanded yet",
        facts.queued,
    )
    yield _gauge(
        "automation_deliveries_queued_oldest_age_seconds",
        "How long the oldest queued webhook has waited for its expansion (0: none)",
        max(0.0, queued_age),
    )
    yield _gauge(
        "automation_deliveries_queued_stalled_seconds",
        "How long the worst queued webhook has gone without a dispatcher holding it, or "
        "held without a chunk stored (0: none); /healthz is degraded past 120",
        _stalled_seconds(facts, now),
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
