"""The dispatcher loop: claim → take a request slot → call amoCRM → record.

What it must make impossible: a launch that silently never happens (every launch ends
in a recorded status), a customer who gets a bot twice (a call whose answer was lost
makes its launches `uncertain`, never silently resent; a dispatcher acts on a launch
only while it holds the launch's claim token, see `outbox.Batch`), and an account that
amoCRM blocks (a shared budget under AMOCRM_MAX_RPS; a 429 or a run of 5xx answers
holds every dispatcher, a 403 pauses them all).
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from automation import metrics
from automation.amocrm.answers import CallResult, Outcome, SalesbotTask
from automation.amocrm.client import (
    MAX_TASKS_PER_CALL,
    SALESBOT_RUN_PATH,
    AmoCRMClient,
)
from automation.config import Settings
from automation.dispatch.expander import Expander
from automation.dispatch.registry import Membership
from automation.dispatch.tokens import TokenStore
from automation.errors import AutomationError, ClaimLost, ConfigError
from automation.store import budget, outbox, retention
from automation.store.outbox import Batch
from automation.store.states import LaunchStatus

__all__ = ["Dispatcher", "Stats", "build"]

log = logging.getLogger("automation.dispatcher")

#: How long an idle dispatcher sleeps before looking for due launches again.
IDLE_SLEEP = 0.05
#: `--once` waits out the rate limit and short holds, not a pause after a 403.
ONCE_MAX_WAIT = 5.0
#: How long sending pauses when there is no token to send with, before trying again.
NO_TOKEN_PAUSE_SECONDS = 60.0
#: A request about to leave this long after its slot (or AMOCRM_RATE_MARGIN_MS, if
#: more) takes a new slot: longer than any commit, shorter than a pause worth the name.
LATE_SLOT = timedelta(milliseconds=250)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Accepted:
    """A call amoCRM accepted, whose answer is not written yet (see `Dispatcher._turn`)."""

    batch: Batch
    call_id: int
    result: CallResult
    at: datetime


@dataclass
class Stats:
    """What one dispatcher did, for `--once` output and tests."""

    calls: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    uncertain: int = 0
    dry_run: int = 0


class Dispatcher:
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
        self.stats = Stats()
        self._stopping = threading.Event()
        self.membership = Membership(sessions, self.dead_after, lambda s: self._stopping.wait(s))
        self._margin = timedelta(milliseconds=settings.amocrm_rate_margin_ms)
        #: When the request slot of the call about to be sent was granted.
        self._slot_at = utcnow()
        #: Look at the budget before claiming (`budget.peek`), so that a wait for a
        #: request slot does not claim and roll back; skipped while the slots come
        #: free at once (a backlog drains), where the look is two queries per call.
        self._look_first = True
        #: The last call's accepted answer, written with the next call's claim.
        self._accepted: _Accepted | None = None
        #: RETENTION_DAYS: a prune pass a day, one small batch per loop turn.
        self._retention = retention.DailyPrune(settings, sessions)
        #: Queued large webhooks are expanded into launches by a thread of their own.
        self.expander = Expander(
            sessions, lambda: self.id, self.dead_after, settings.rules_file, threading.Event()
        )

    @property
    def id(self) -> str:
        """This dispatcher's name in the registry (a new one after a takeover)."""
        return self.membership.id

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
        heartbeat = self.membership.start_heartbeat()
        self.expander.stopping.clear()
        if once:
            self.expander.drain()
        else:
            self.expander.start()
        try:
            while not self._stopping.is_set():
                if not self.membership.registered:  # declared dead while stalled
                    self._register(wait_if_not_alone)
                self.membership.maybe_recover()
                self._retention.tick()
                waited = self._turn()
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
            self.expander.stop()
            heartbeat.join()
            self._write_last_answer()
            self._unregister()
        return self.stats

    def _write_last_answer(self) -> None:
        """On the way out: a failure here leaves the call to recovery (`uncertain`)."""
        try:
            self._write_accepted()
        except SQLAlchemyError as exc:
            log.error(
                "the last accepted call was not recorded (%s): recovery will make "
                "its launches uncertain",
                type(exc).__name__,
            )

    def _register(self, wait: bool) -> None:
        self.membership.register(wait)
        log.info("dispatcher started id=%s dry_run=%s", self.id, self.dry_run)

    def _unregister(self) -> None:
        self.membership.unregister()
        log.info(
            "dispatcher stopped id=%s calls=%s sent=%s", self.id, self.stats.calls, self.stats.sent
        )

    # ----------------------------------------------------------------- one cycle

    def step(self) -> float | None:
        """Claim one batch, send it and record its outcome. None: nothing due; > 0:
        seconds to wait."""
        waited = self._turn()
        self._write_accepted()
        return waited

    def _turn(self) -> float | None:
        """`step`, except that an accepted call's answer is written in the transaction
        that claims the next batch: one commit per call, not two.

        The answer waits at most one loop turn: it is written at once when nothing is
        due, when the next call must wait for its request slot, and when the loop
        stops. A crash in between leaves the call as one whose answer was lost: its
        launches are still `sending` in a call without an end, and recovery makes them
        `uncertain`, never `pending`, so nothing is sent twice (docs/operating.md).
        """
        try:
            return self._step()
        except ClaimLost as problem:
            self.membership.taken_over(problem)
            return 0.0

    def _step(self) -> float | None:
        with self.sessions() as session:
            written = self._record_accepted(session)
            self.membership.check(session)
            if not self.dry_run and self._look_first:
                wait = budget.peek(session, self.settings.amocrm_max_rps, self._margin).wait
                if wait > 0:
                    # Nothing due (a failed batch waits for the hold's end): say so, and
                    # `--once` stops instead of waiting to send what is not due yet.
                    due = outbox.any_due(session, utcnow())
                    self._end(session, written)
                    return wait if due else None
            claimed = outbox.claim_call(
                session, self.id, utcnow(), SALESBOT_RUN_PATH, MAX_TASKS_PER_CALL
            )
            if claimed is None:
                self._end(session, written)
                return None
            batch, call_id = claimed
            wait = self._take_slot(session, call_id)
            self._look_first = wait > 0
            if wait > 0:
                session.rollback()  # the claim too: nothing is held while waiting,
                self._write_accepted()  # but the last answer is written at once
                return wait
            session.commit()
            self._accepted_recorded(written)
        # Committed: the call row exists before the request goes out.
        self._send(batch, call_id, defer=True)
        return 0.0

    def _end(self, session: Session, written: int | None) -> None:
        """Commit the last call's answer, if this transaction wrote it; else roll back."""
        if written is None:
            session.rollback()
            return
        session.commit()
        self._accepted_recorded(written)

    def _open_call(self, session: Session, batch: Batch) -> tuple[int | None, float]:
        """Record the call for launches already held, and take its request slot.

        `start_call` refuses (`ClaimLost`) unless every launch is still held by this
        claim.
        """
        call_id = outbox.start_call(session, batch, SALESBOT_RUN_PATH, utcnow())
        wait = self._take_slot(session, call_id)
        return (call_id, 0.0) if wait <= 0 else (None, wait)

    def _take_slot(self, session: Session, call_id: int) -> float:
        """Take the request slot of call `call_id`, recorded earlier in this transaction:
        0 when it may go (commit), or the seconds to wait (roll back).

        The slot is taken last, right before the commit, and the call's start time is
        read then: the later the clock is read, the closer it is to the moment amoCRM
        sees the request, and the tighter the shared budget can be kept.
        """
        if self.dry_run:
            return 0.0
        verdict = budget.take(session, self.settings.amocrm_max_rps, call_id, self._margin)
        if not verdict.go:
            return verdict.wait
        outbox.stamp_call(session, call_id, verdict.now)
        self._slot_at = verdict.now
        return 0.0

    def _send(
        self, batch: Batch, call_id: int, retried_401: bool = False, defer: bool = False
    ) -> None:
        """Send a batch whose call is recorded, and act on the answer. `defer`: an
        accepted answer is written with the next claim (`_turn`), not at once."""
        if self.dry_run:
            self.stats.calls += 1
            self._record_dry_run(batch, call_id)
            return
        if self._slot_missed(batch, call_id, retried_401):
            return
        self.stats.calls += 1
        assert self.client is not None
        tasks = [SalesbotTask(c.bot_id, c.entity_id, c.entity_type) for c in batch.launches]
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
        if result.outcome is Outcome.ACCEPTED:
            self._write_accepted()  # one answer waits at a time
            self._accepted = _Accepted(batch, call_id, result, utcnow())
            if not defer:
                self._write_accepted()
            return
        self._finish(call_id, result, settle=batch)

    def _slot_missed(self, batch: Batch, call_id: int, retried_401: bool) -> bool:
        """Give up a slot granted too long ago (LATE_SLOT), and take another.

        The budget counts a call at the moment its slot was granted. A dispatcher paused
        between then and its request (SIGSTOP, a VM pause, a swap storm) would send when
        the budget has already let others go: one call too many in amoCRM's second. So
        the late call is recorded as `not_sent` (it never left) and the batch, still
        held, waits for a new slot; `_resend` also notices a takeover meanwhile.
        Lateness within AMOCRM_RATE_MARGIN_MS is what the margin is for; between it and
        LATE_SLOT (a slow commit, a busy host) the request goes: a host that slow
        needs a larger margin, and giving up every slot would send nothing at all.
        """
        late = utcnow() - self._slot_at
        if late <= max(self._margin, LATE_SLOT):
            return False
        error = (
            f"not sent: the request would have left {late.total_seconds():.3f}s after its "
            "request slot (the dispatcher was paused); the batch takes a new slot"
        )
        with self.sessions.begin() as session:
            outbox.finish_call(
                session, call_id, utcnow(), outcome=Outcome.NOT_SENT.value, error=error
            )
        log.warning("request slot missed call=%s launches=%s: %s", call_id, len(batch), error)
        self._resend(batch, retried_401=retried_401)
        return True

    def _finish(self, call_id: int, result: CallResult, settle: Batch | None = None) -> None:
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
            if settle is not None:
                self._settle(session, settle, result, now)

    def _record_accepted(self, session: Session) -> int | None:
        """Write the waiting accepted answer in `session`'s transaction: the call's end,
        its launches `sent`. How many were settled, or None when no answer waits; the
        answer keeps waiting until `_accepted_recorded` is told of the commit."""
        accepted = self._accepted
        if accepted is None:
            return None
        result, at = accepted.result, accepted.at
        outbox.finish_call(
            session,
            accepted.call_id,
            at,
            outcome=result.outcome.value,
            status_code=result.status_code,
            error=result.error,
            excerpt=result.body_excerpt,
        )
        done = outbox.settle(session, accepted.batch, LaunchStatus.SENT, at, "accepted by amoCRM")
        if done < len(accepted.batch):
            late = outbox.accepted_late(session, accepted.batch, accepted.call_id, at)
            if late:
                log.warning(
                    "call=%s accepted after this dispatcher was declared dead: %s launches "
                    "recovery had made uncertain are sent",
                    accepted.call_id,
                    late,
                )
            done += late
        budget.succeeded(session, at)
        return done

    def _accepted_recorded(self, done: int | None) -> None:
        """The transaction that wrote the accepted answer committed."""
        accepted = self._accepted
        if done is None or accepted is None:
            return
        self._accepted = None
        self.stats.sent += done
        metrics.launches_settled(LaunchStatus.SENT, done)
        _say_if_fenced(accepted.batch, done, "sent")

    def _write_accepted(self) -> None:
        """Write the waiting accepted answer now, in a transaction of its own."""
        if self._accepted is None:
            return
        with self.sessions.begin() as session:
            done = self._record_accepted(session)
        self._accepted_recorded(done)

    def _record_dry_run(self, batch: Batch, call_id: int) -> None:
        now = utcnow()
        with self.sessions.begin() as session:
            outbox.finish_call(session, call_id, now, outcome="dry_run")
            done = outbox.settle(session, batch, LaunchStatus.DRY_RUN, now, "dry run: not sent")
        self.stats.dry_run += done
        metrics.launches_settled(LaunchStatus.DRY_RUN, done)

    # ------------------------------------------------------------- the outcomes

    def _settle(self, session: Session, batch: Batch, result: CallResult, now: datetime) -> None:
        outcome = result.outcome
        if outcome is Outcome.UNCERTAIN and not self.settings.amocrm_retry_uncertain:
            said = "no answer" if result.status_code is None else f"HTTP {result.status_code}"
            reason = f"uncertain: {said} from amoCRM ({result.error})"
            done = outbox.settle(session, batch, LaunchStatus.UNCERTAIN, now, reason)
            self.stats.uncertain += done
            metrics.launches_settled(LaunchStatus.UNCERTAIN, done)
            log.error("call outcome unknown launches=%s error=%s", len(batch), result.error)
        elif outcome in (Outcome.FORBIDDEN, Outcome.UNAUTHORIZED):
            what = "403 forbidden" if outcome is Outcome.FORBIDDEN else "401 unauthorized"
            seconds = self.settings.amocrm_pause_on_403
            self._hold(session, batch, now, seconds, f"{what} from amoCRM", str(result.error))
            metrics.dispatch_hold(outcome.value)
        elif outcome is Outcome.RATE_LIMITED:
            # Our shared pacing met amoCRM's limit: everyone holds, the launches wait
            # without it counting against their retry budget.
            backoff = budget.rate_limited(session, now, result.retry_after)
            reason = f"rate limited by amoCRM (429): all dispatchers hold {_secs(backoff)}"
            outbox.release(session, batch, now, reason, not_before=now + backoff)
            metrics.dispatch_hold(outcome.value)
            log.warning("%s", reason)
        elif result.retryable or outcome is Outcome.UNCERTAIN:  # AMOCRM_RETRY_UNCERTAIN
            what = result.error or f"HTTP {result.status_code}"
            backoff = budget.failed(session, now, f"{outcome.value}: {what}")
            metrics.dispatch_hold(outcome.value)
            log.warning(
                "amoCRM failing (%s): all dispatchers hold %s", outcome.value, _secs(backoff)
            )
            self._retry(session, batch, result, now, now + backoff)
        else:  # ACCEPTED is `_record_accepted`'s, BAD_REQUEST and REFUSED `_isolate`'s
            raise AssertionError(f"no rule settles a call with outcome {outcome}")

    def _retry(
        self, session: Session, batch: Batch, result: CallResult, now: datetime, due: datetime
    ) -> None:
        """Back to `pending` together, due when the shared hold ends; a launch whose
        AMOCRM_MAX_ATTEMPTS-th attempt this was fails instead."""
        error = f"{result.outcome.value}: {result.error or result.status_code}"
        most = self.settings.amocrm_max_attempts
        spent = [launch for launch in batch.launches if launch.retries + 1 >= most]
        keep = [launch for launch in batch.launches if launch.retries + 1 < most]
        for retries, group in itertools.groupby(spent, key=lambda launch: launch.retries):
            reason = f"failed after {retries + 1} attempts; last: {error}"
            done = outbox.settle(session, batch.part(list(group)), LaunchStatus.FAILED, now, reason)
            self.stats.failed += done
            metrics.launches_settled(LaunchStatus.FAILED, done)
        self.stats.retried += outbox.retry_later(session, batch.part(keep), due, now, error)

    def _without_token(self, batch: Batch, call_id: int, problem: AutomationError) -> None:
        """No token to send with: nothing left this host, so the launches wait unharmed
        and all sending pauses, to try again once `auth exchange` has stored tokens."""
        now = utcnow()
        with self.sessions.begin() as session:
            outbox.finish_call(
                session, call_id, now, outcome=Outcome.NOT_SENT.value, error=str(problem)
            )
            why = "no amoCRM token to send with"
            self._hold(session, batch, now, NO_TOKEN_PAUSE_SECONDS, why, str(problem))
        metrics.dispatch_hold("no_token")

    def _hold(
        self, session: Session, batch: Batch, now: datetime, seconds: float, why: str, detail: str
    ) -> None:
        """Pause every dispatcher; the launches go back to waiting, they did nothing wrong."""
        until = now + timedelta(seconds=seconds)
        reason = f"{why}: sending paused until {until:%H:%M:%S}Z ({detail})"
        budget.hold(session, until, reason, now)
        outbox.release(session, batch, now, reason=reason)
        log.error("%s", reason)

    def _after_401(self, batch: Batch) -> None:
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

    def _isolate(self, batch: Batch, result: CallResult) -> None:
        """amoCRM blamed the batch: fail the launches it names, or split and resend
        the halves until each bad launch is alone, so one bad bot id costs one launch."""
        if len(batch) == 1:
            now = utcnow()
            answer = f"{result.error or ''} {result.body_excerpt}".strip()
            reason = f"rejected by amoCRM ({result.status_code}): {answer}".strip()[:2000]
            with self.sessions.begin() as session:
                done = outbox.settle(session, batch, LaunchStatus.FAILED, now, reason)
            self.stats.failed += done
            metrics.launches_settled(LaunchStatus.FAILED, done)
            return
        launches = batch.launches
        named = [launches[i] for i in result.bad_indexes if i < len(launches)]
        if named:
            for launch in named:
                self._isolate(batch.part([launch]), result)
            rest = [launch for launch in launches if launch not in named]
            if rest:
                self._resend(batch.part(rest))
            return
        middle = len(launches) // 2
        for half in (launches[:middle], launches[middle:]):
            self._resend(batch.part(half))

    def _resend(self, batch: Batch, retried_401: bool = False) -> None:
        """Send launches this dispatcher already holds, in a new call, when a slot frees.

        It may have stalled while waiting: before the call, the registry row and the
        claim are checked again, and a claim lost meanwhile stops everything held.
        """
        self._write_accepted()  # a half accepted before this one
        while True:
            if self._stopping.is_set():
                # SIGTERM lets the call in flight finish, not the calls a bisect or a
                # token refresh still has in mind: up to a dozen more at the rate limit.
                self._give_back(batch, "not sent: the dispatcher stopped; sent again later")
                return
            try:
                with self.sessions() as session:
                    self.membership.check(session)
                    call_id, wait = self._open_call(session, batch)
                    if call_id is not None:
                        session.commit()
                        break
                    session.rollback()
            except ClaimLost:
                self._give_back(batch, "claim lost: released by its old holder")
                raise
            if wait > 60 or self._stopping.is_set():
                # A long hold (403, 401): give the launches back instead of holding them.
                self._give_back(batch, "sending on hold")
                return
            self._stopping.wait(wait)
        self._send(batch, call_id, retried_401=retried_401)

    def _give_back(self, batch: Batch, reason: str) -> None:
        """Release what is still held by this claim (nothing, once taken over)."""
        with self.sessions.begin() as session:
            outbox.release(session, batch, utcnow(), reason)


def _say_if_fenced(batch: Batch, done: int, what: str) -> None:
    if done < len(batch):
        log.error(
            "%s of %s launches were taken over by another dispatcher before they could be "
            "marked %s; left as their new holder recorded them",
            len(batch) - done,
            len(batch),
            what,
        )


def _secs(delta: timedelta) -> str:
    return f"{delta.total_seconds():g}s"


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
