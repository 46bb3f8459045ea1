"""Prometheus counters and histograms, counted where things happen.

The webhook endpoint, the dispatcher, the amoCRM client and the rules loader each make
a one-line call into this module. Under `automation serve` every gunicorn worker and the
dispatcher child write them to files in `PROMETHEUS_MULTIPROC_DIR`, and a scrape,
whichever worker answers it, adds them all up (prometheus-client's multiprocess mode).
Without that variable (tests, a single process) a scrape shows this process's own counts.

This module imports neither Flask nor the database nor the rules: the amoCRM client
counts its calls without loading any of them. The scrape endpoint and its database
gauges live in `automation.web.metrics`.

The metric names are an interface: dashboards and alerts depend on them.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from automation.store import states
from automation.store.states import LaunchStatus

if TYPE_CHECKING:
    from automation.events.payloads import Payload
    from automation.rules.load import PlannedLaunch
    from automation.store.intake import Enqueued

#: This package's metrics, apart from prometheus-client's global registry.
REGISTRY = CollectorRegistry()
#: The view whose answers `automation_webhooks_total` counts.
WEBHOOK_ENDPOINT = "webhooks.receive"
#: Every answer the webhook endpoint gives, by name; pre-set to 0 so rates work at once.
WEBHOOK_OUTCOMES = (
    "accepted",
    "unrecognized",
    "queued",
    "bad_request",
    "forbidden",
    "not_found",
    "too_large",
    "unsupported",
    "too_slow",
    "unavailable",
    "error",
)
_STATUS_OUTCOMES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    408: "too_slow",
    413: "too_large",
    415: "unsupported",
    503: "unavailable",
}
ENQUEUE_RESULTS = ("pending", "skipped", "duplicate")

WEBHOOKS = Counter(
    "automation_webhooks",
    "Webhook requests answered, by outcome: accepted or unrecognized (stored, 200), "
    "queued (a large body stored raw, 200, expanded by a dispatcher), "
    "bad_request, forbidden, not_found (wrong secret), too_large, unsupported (content "
    "type), too_slow (408), unavailable (503: not configured or not stored), error (500)",
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
DISPATCH_HOLDS = Counter(
    "automation_dispatch_holds",
    "Times every dispatcher was put on hold, by cause: rate_limited (429), server_error, "
    "not_sent (connection failure), other, uncertain (with AMOCRM_RETRY_UNCERTAIN), "
    "forbidden (403), unauthorized (401), no_token",
    ["cause"],
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
for _status in states.SETTLED:
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


def webhook_queued() -> None:
    """Count a committed large delivery stored raw (`queued`): its events and launches
    are not known until a dispatcher expands it."""
    _child(WEBHOOKS, "queued").inc()


@cache
def _child(metric: Counter, label: str) -> Counter:
    """`metric.labels(label)`, remembered: `labels` validates and locks on every call,
    and a webhook counts five of them. Label values are event types, rule names and
    fixed words, so the memo stays small."""
    return metric.labels(label)


def launches_settled(status: LaunchStatus, count: int) -> None:
    """Count launches the dispatcher moved to a final status."""
    _inc(LAUNCHES_SETTLED.labels(status.value), count)


def dispatch_hold(cause: str) -> None:
    """Count a hold that stops every dispatcher (its length is in the log and /healthz)."""
    DISPATCH_HOLDS.labels(cause).inc()


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


def webhook_outcome(status_code: int) -> str:
    """The `outcome` label of a webhook answer that stored nothing (500 and any
    status the endpoint is not meant to give count as `error`)."""
    return _STATUS_OUTCOMES.get(status_code, "error")
