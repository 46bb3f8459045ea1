"""The dispatcher loop: claim → take a request slot → call amoCRM → record.

What it must make impossible: a launch that silently never happens (every launch ends
in a recorded status), a customer who gets a bot twice (a call whose answer was lost
makes its launches `uncertain`, never silently resent), and an account that amoCRM
blocks (a shared budget under AMOCRM_MAX_RPS; a 429 slows every dispatcher, a 403
pauses them all).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from automation import metrics
from automation.amocrm.answers import CallResult, Outcome, SalesbotTask
from automation.amocrm.client import (
    MAX_TASKS_PER_CALL,
    SALESBOT_RUN_PATH,
    AmoCRMClient,
)
from automation.config import Settings
from automation.dispatch.presence import Presence, utcnow
from automation.dispatch.retry import retry_decision
from automation.dispatch.tokens import TokenStore
from automation.errors import AutomationError, ConfigError
from automation.store import budget, dispatchers, outbox, retention
from automation.store.outbox import Claimed
from automation.store.states import LaunchStatus

log = logging.getLogger("automation.dispatcher")

#: How long an idle dispatcher sleeps before looking for due launches again.
IDLE_SLEEP = 0.05
#: `--once` waits out the rate limit and short back-offs, not a pause after a 403.
ONCE_MAX_WAIT = 5.0
#: How long sending pauses when there is no token to send with, before trying again.
NO_TOKEN_PAUSE_SECONDS = 60.0


@dataclass
class Stats:
    """What one dispatcher did, for `--once` output and tests."""

    calls: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    uncertain: int = 0
    dry_run: int = 0


class Dispatcher(Presence):
    """One dispatcher process's loop. `run()` until `stop()`; `run(once=True)` drains."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        client: AmoCRMClient | None,
        tokens: TokenStore | None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.client = client
        self.tokens = tokens
        self.dead_after = timedelta(seconds=settings.dispatcher_dead_after)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = Stats()
        self._stopping = threading.Event()
        self._margin = timedelta(milliseconds=settings.amocrm_rate_margin_ms)
        self._last_recovery = time.monotonic()
        self._sqlite = sessions.kw["bind"].dialect.name == "sqlite"
        #: RETENTION_DAYS: a prune pass a day, one small batch per loop turn.
        self._retention = retention.DailyPrune(settings, sessions)

    @property
    def dry_run(self) -> bool:
        return self.settings.is_dry_run or self.client is None

    def stop(self) -> None:
        """Ask the loop to finish the call in flight and return (signal-safe)."""
        self._stopping.set()

    # ------------------------------------------------------------------ lifecycle

    def run(self, once: bool = False, wait_if_not_alone: bool = True) -> Stats:
        """Send due launches until stopped (or, with `once`, until none is due)."""
        self._register(wait_if_not_alone)
        heartbeat = self._start_heartbeat()
        try:
            while not self._stopping.is_set():
                self._maybe_recover()
                self._retention.tick()
                waited = self.step()
                if waited is None:
                    if once:
                        break
                    self._stopping.wait(IDLE_SLEEP)
                elif once and waited > ONCE_MAX_WAIT:
                    log.warning("sending is on hold for %.0fs; --once stops here", waited)
                    break
                elif waited > 0:
                    self._stopping.wait(min(waited, 1.0))
        finally:
            self._stopping.set()
            heartbeat.join()
            self._unregister()
        return self.stats

    def _unregister(self) -> None:
        now = utcnow()
        with self.sessions.begin() as session:
            outbox.release_claims(session, self.id, now)
            dispatchers.unregister(session, self.id, now)
        log.info(
            "dispatcher stopped id=%s calls=%s sent=%s", self.id, self.stats.calls, self.stats.sent
        )

    # ----------------------------------------------------------------- one cycle

    def step(self) -> float | None:
        """Claim one batch and send it. None: nothing due; > 0: seconds to wait."""
        with self.sessions() as session:
            if not self.dry_run:
                wait = budget.peek(session, self.settings.amocrm_max_rps, self._margin).wait
                if wait > 0:
                    session.rollback()
                    return wait
            batch = outbox.claim_due(session, self.id, utcnow(), MAX_TASKS_PER_CALL)
            if not batch:
                session.rollback()
                return None
            call_id, wait = self._open_call(session, batch)
            if call_id is None:
                session.rollback()  # the claim too: nothing is held while waiting
                return wait
            session.commit()
        # Committed: the call row exists before the request goes out.
        self._send(batch, call_id)
        return 0.0

    def _open_call(self, session: Session, batch: Sequence[Claimed]) -> tuple[int | None, float]:
        """Record the call and take its request slot, in that order, in one transaction.

        The slot is taken last, right before the commit, and the call's start time is
        read then: the later the clock is read, the closer it is to the moment amoCRM
        sees the request, and the tighter the shared budget can be kept.
        """
        call_id = outbox.start_call(session, self.id, SALESBOT_RUN_PATH, batch, utcnow())
        if self.dry_run:
            return call_id, 0.0
        verdict = budget.take(session, self.settings.amocrm_max_rps, call_id, self._margin)
        if not verdict.go:
            return None, verdict.wait
        outbox.stamp_call(session, call_id, verdict.now)
        return call_id, 0.0

    def _send(self, batch: Sequence[Claimed], call_id: int, retried_401: bool = False) -> None:
        self.stats.calls += 1
        if self.dry_run:
            self._record_dry_run(batch, call_id)
            return
        assert self.client is not None
        tasks = [SalesbotTask(c.bot_id, c.entity_id, c.entity_type) for c in batch]
        try:
            result = self.client.run_salesbots(tasks)
        except AutomationError as exc:  # no token (none exchanged yet, refresh refused)
            self._without_token(batch, call_id, exc)
            return
        if result.outcome is Outcome.UNAUTHORIZED and not retried_401:
            self._finish(call_id, result)
            self._after_401(batch)
            return
        if result.outcome in (Outcome.BAD_REQUEST, Outcome.REFUSED):
            self._finish(call_id, result)
            self._isolate(batch, result)
            return
        self._finish(call_id, result, settle=batch)

    def _finish(self, call_id: int, result: CallResult, settle: Sequence[Claimed] = ()) -> None:
        """Record the call's end and, in the same transaction, the launches' outcome."""
        now = utcnow()
        with self.sessions.begin() as session:
            outbox.finish_call(
                session,
                call_id,
                now,
                outcome=result.outcome.value,
                status_code=result.status_code,
                error=result.error,
                excerpt=result.body_excerpt,
            )
            if settle:
                self._settle(session, settle, result, now)

    def _record_dry_run(self, batch: Sequence[Claimed], call_id: int) -> None:
        now = utcnow()
        with self.sessions.begin() as session:
            outbox.finish_call(session, call_id, now, outcome="dry_run")
            outbox.settle(
                session, [c.id for c in batch], LaunchStatus.DRY_RUN, now, "dry run: not sent"
            )
        self.stats.dry_run += len(batch)
        metrics.launches_settled(LaunchStatus.DRY_RUN, len(batch))

    # ------------------------------------------------------------- the outcomes

    def _settle(
        self, session: Session, batch: Sequence[Claimed], result: CallResult, now: datetime
    ) -> None:
        ids = [c.id for c in batch]
        outcome = result.outcome
        if outcome is Outcome.ACCEPTED:
            outbox.settle(session, ids, LaunchStatus.SENT, now, "accepted by amoCRM")
            budget.succeeded(session, now)
            self.stats.sent += len(ids)
            metrics.launches_settled(LaunchStatus.SENT, len(ids))
        elif outcome is Outcome.UNCERTAIN and not self.settings.amocrm_retry_uncertain:
            said = "no answer" if result.status_code is None else f"HTTP {result.status_code}"
            reason = f"uncertain: {said} from amoCRM ({result.error})"
            outbox.settle(session, ids, LaunchStatus.UNCERTAIN, now, reason)
            self.stats.uncertain += len(ids)
            metrics.launches_settled(LaunchStatus.UNCERTAIN, len(ids))
            log.error("call outcome unknown launches=%s error=%s", len(ids), result.error)
        elif outcome is Outcome.FORBIDDEN:
            self._pause(
                session, ids, now, self.settings.amocrm_pause_on_403, result, "403 forbidden"
            )
        elif outcome is Outcome.UNAUTHORIZED:
            self._pause(
                session, ids, now, self.settings.amocrm_pause_on_403, result, "401 unauthorized"
            )
        elif result.retryable or outcome is Outcome.UNCERTAIN:  # AMOCRM_RETRY_UNCERTAIN
            if outcome is Outcome.RATE_LIMITED:
                backoff = budget.rate_limited(session, now, result.retry_after)
                log.warning(
                    "amoCRM answered 429: all dispatchers back off %ss", backoff.total_seconds()
                )
            self._retry(session, batch, result, now)
        else:  # BAD_REQUEST and REFUSED are `_isolate`'s: they never reach here
            raise AssertionError(f"no rule settles a call with outcome {outcome}")

    def _retry(
        self, session: Session, batch: Sequence[Claimed], result: CallResult, now: datetime
    ) -> None:
        error = f"{result.outcome.value}: {result.error or result.status_code}"
        for launch in batch:
            decision = retry_decision(launch.retries, self.settings.amocrm_max_attempts, now)
            if decision.give_up:
                reason = f"failed after {launch.retries + 1} attempts; last: {error}"
                outbox.settle(session, [launch.id], LaunchStatus.FAILED, now, reason)
                self.stats.failed += 1
                metrics.launches_settled(LaunchStatus.FAILED, 1)
            else:
                assert decision.not_before is not None
                outbox.retry_later(session, launch, decision.not_before, now, error)
                self.stats.retried += 1

    def _pause(
        self,
        session: Session,
        ids: list[int],
        now: datetime,
        seconds: float,
        result: CallResult,
        what: str,
    ) -> None:
        """Stop all sending for a while after amoCRM's `what` (a 403, a 401)."""
        self._hold(session, ids, now, seconds, f"{what} from amoCRM", str(result.error))

    def _without_token(
        self, batch: Sequence[Claimed], call_id: int, problem: AutomationError
    ) -> None:
        """No token to send with: nothing left this host, so the launches wait unharmed
        and all sending pauses, to try again once `auth exchange` has stored tokens."""
        now = utcnow()
        with self.sessions.begin() as session:
            outbox.finish_call(
                session, call_id, now, outcome=Outcome.NOT_SENT.value, error=str(problem)
            )
            ids = [c.id for c in batch]
            self._hold(
                session,
                ids,
                now,
                NO_TOKEN_PAUSE_SECONDS,
                "no amoCRM token to send with",
                str(problem),
            )

    def _hold(
        self, session: Session, ids: list[int], now: datetime, seconds: float, why: str, detail: str
    ) -> None:
        """Pause every dispatcher; the launches go back to waiting, they did nothing wrong."""
        until = now + timedelta(seconds=seconds)
        reason = f"{why}: sending paused until {until:%H:%M:%S}Z ({detail})"
        budget.hold(session, until, reason, now)
        outbox.release(session, ids, now, reason=reason)
        log.error("%s", reason)

    def _after_401(self, batch: Sequence[Claimed]) -> None:
        """Refresh the token and resend once; if that is impossible, pause."""
        if self.tokens is not None and self.tokens.refresh_after_401(self.tokens.last_token):
            self._resend(batch, retried_401=True)
            return
        now = utcnow()
        result = CallResult(
            outcome=Outcome.UNAUTHORIZED,
            status_code=401,
            body_excerpt="",
            error="the token was refused and cannot be refreshed",
            bad_indexes=(),
            started_at=now,
            finished_at=now,
            duration_ms=0.0,
        )
        with self.sessions.begin() as session:
            self._settle(session, batch, result, now)

    def _isolate(self, batch: Sequence[Claimed], result: CallResult) -> None:
        """amoCRM blamed the batch: fail the launches it names, or split and resend
        the halves until each bad launch is alone, so one bad bot id costs one launch."""
        if len(batch) == 1:
            now = utcnow()
            answer = f"{result.error or ''} {result.body_excerpt}".strip()
            reason = f"rejected by amoCRM ({result.status_code}): {answer}"
            with self.sessions.begin() as session:
                outbox.settle(
                    session, [batch[0].id], LaunchStatus.FAILED, now, reason.strip()[:2000]
                )
            self.stats.failed += 1
            metrics.launches_settled(LaunchStatus.FAILED, 1)
            return
        named = [batch[i] for i in result.bad_indexes if i < len(batch)]
        if named:
            for launch in named:
                self._isolate([launch], result)
            rest = [launch for launch in batch if launch not in named]
            if rest:
                self._resend(rest)
            return
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            self._resend(half)

    def _resend(self, batch: Sequence[Claimed], retried_401: bool = False) -> None:
        """Send launches this dispatcher already holds, in a new call, when a slot frees."""
        while True:
            with self.sessions() as session:
                call_id, wait = self._open_call(session, batch)
                if call_id is not None:
                    session.commit()
                    break
                session.rollback()
            if wait > 60 or self._stopping.is_set():
                # A long hold (403, 401): give the launches back instead of holding them.
                with self.sessions.begin() as session:
                    outbox.release(session, [c.id for c in batch], utcnow(), "sending on hold")
                return
            self._stopping.wait(wait)
        self._send(batch, call_id, retried_401=retried_401)


def build(
    settings: Settings, sessions: sessionmaker[Session], read_timeout: float | None = None
) -> Dispatcher:
    """A dispatcher wired to amoCRM as the settings say (or dry run); `read_timeout`
    overrides AMOCRM_TIMEOUT's read part (tests make timeouts happen quickly)."""
    if settings.is_dry_run:
        return Dispatcher(settings, sessions, None, None)
    if settings.amocrm_url is None:
        raise ConfigError(
            "sending needs AMOCRM_SUBDOMAIN or AMOCRM_BASE_URL (or set DRY_RUN=1 to only record)"
        )
    tokens = TokenStore(settings, sessions)
    client = AmoCRMClient.for_settings(settings, tokens.access_token, read_timeout)
    return Dispatcher(settings, sessions, client, tokens)
