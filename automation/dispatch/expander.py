"""The expander: a dispatcher's thread that turns queued large webhooks into launches.

The webhook answered 200 as soon as the raw body was stored (`store.queue`). Here the
body is decoded and judged as a replay judges it (the same decoder, the rules version in
force when it arrived, `intake.enqueue_launches` as of its arrival), then stored a
chunk per short transaction: on SQLite each transaction holds the only write lock, so a
chunk is sized to about `SQLITE_CHUNK_SECONDS` of work and followed by a pause as long,
and a small webhook waits at most one chunk for the lock. PostgreSQL has no such lock;
there chunks are larger and the pauses short.

Claims are fenced (`store.queue.store_chunk`): a second dispatcher, or one that stalled
past DISPATCHER_DEAD_AFTER and lost its claim, stores nothing; a crash resumes from the
last chunk committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from automation.errors import ClaimLost, PayloadError, RulesError
from automation.events.mentions import named_entities
from automation.events.payloads import Payload, decode_body
from automation.rules.build import load_rules_file
from automation.rules.load import PlannedLaunch, RuleSet
from automation.store import queue, versions
from automation.store.queue import Claim, Progress
from automation.store.states import DeliveryStatus

log = logging.getLogger("automation.expander")

#: Work per chunk on SQLite, in seconds, and the pause after it is as long: small
#: webhooks wait at most about this long for the write lock.
SQLITE_CHUNK_SECONDS = 0.02
#: PostgreSQL: larger chunks (webhooks wait only for the chats a chunk locks).
POSTGRESQL_CHUNK_SECONDS = 0.2
#: The pause after a chunk, as a share of the chunk's own time.
SQLITE_PAUSE_SHARE = 1.0
POSTGRESQL_PAUSE_SHARE = 0.1
#: Rows in the first chunk; later ones are sized from the time the previous took.
FIRST_CHUNK = 50
MIN_CHUNK, MAX_CHUNK = 5, 5000
#: How long an idle expander waits before looking for queued deliveries again.
IDLE_SLEEP = 0.5


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Work:
    """A decoded queued delivery: what its chunks store."""

    events: int
    entities: list[tuple[str, int]]
    planned: list[PlannedLaunch]
    status: DeliveryStatus


class Expander:
    """Expands queued deliveries until stopped (`run`), or until none is left (`drain`)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        owner: Callable[[], str],
        stale_after: timedelta,
        rules_file: str,
        stopping: threading.Event | None = None,
    ) -> None:
        """`owner()` names the dispatcher (its registry id); a claim older than
        `stale_after` is taken over; `rules_file` judges a delivery stored before
        rules versions were recorded."""
        self.sessions, self.owner, self.stale_after = sessions, owner, stale_after
        self.rules_file = rules_file
        self.stopping = stopping or threading.Event()
        sqlite = sessions.kw["bind"].dialect.name == "sqlite"
        self.chunk_seconds = SQLITE_CHUNK_SECONDS if sqlite else POSTGRESQL_CHUNK_SECONDS
        self.pause_share = SQLITE_PAUSE_SHARE if sqlite else POSTGRESQL_PAUSE_SHARE
        self._rules: dict[int | None, RuleSet] = {}
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Run in a daemon thread of this process."""
        self._thread = threading.Thread(target=self.run, name="expander", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop after the chunk in hand; the claim is let go for the next expander."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Expand queued deliveries until `stopping` is set; errors are logged, not fatal."""
        while not self.stopping.is_set():
            try:
                expanded = self.expand_next()
            except SQLAlchemyError as exc:
                log.error("expander: database error %s; trying again", type(exc).__name__)
                expanded = False
            except Exception:  # a bug must not end the thread: the claim goes stale
                log.exception("expander: unexpected error; trying again")
                expanded = False
            if not expanded:
                self.stopping.wait(IDLE_SLEEP)

    def drain(self) -> int:
        """Expand every queued delivery now (`dispatch --once`); how many were."""
        count = 0
        while not self.stopping.is_set() and self.expand_next():
            count += 1
        return count

    # --------------------------------------------------------------- one delivery

    def expand_next(self) -> bool:
        """Claim one queued delivery and expand it; False when none was waiting."""
        with self.sessions.begin() as session:
            claim = queue.claim_next(session, self.owner(), utcnow(), self.stale_after)
        if claim is None:
            return False
        started = time.perf_counter()
        try:
            self._expand(claim)
        except ClaimLost as lost:
            log.warning("expander: %s", lost)
        log.info(
            "expanded delivery=%s seconds=%.2f", claim.delivery_id, time.perf_counter() - started
        )
        return True

    def _expand(self, claim: Claim) -> None:
        at = Progress(claim.launches_done, claim.entities_done)
        try:
            work = self._work(claim)
        except (PayloadError, RulesError) as exc:
            with self.sessions.begin() as session:
                queue.finish(
                    session.connection(), claim, at, DeliveryStatus.REJECTED, utcnow(), str(exc)
                )
            log.error("queued delivery=%s rejected: %s", claim.delivery_id, exc)
            return
        size = FIRST_CHUNK
        while at.launches_done < len(work.planned) or at.entities_done < len(work.entities):
            if self.stopping.is_set():
                self._release(claim)
                return
            at, seconds = self._chunk(claim, work, at, size)
            size = self._next_size(size, seconds)
            self.stopping.wait(seconds * self.pause_share)
        totals = (work.events, len(work.planned))
        with self.sessions.begin() as session:
            queue.finish(session.connection(), claim, at, work.status, utcnow(), totals=totals)

    def _work(self, claim: Claim) -> Work:
        """Decode and judge the body as a replay would, with the stored rules version."""
        # As of its arrival, as the webhook would have: keys, delays and hours alike.
        payload = decode_body(claim.body, claim.content_type, received_at=claim.received_at)
        _check_account(claim, payload)
        rules = self._rules_of(claim.rules_version_id)
        planned = rules.plan(payload.events, claim.received_at)
        status = DeliveryStatus.ACCEPTED if payload.recognized else DeliveryStatus.UNRECOGNIZED
        return Work(len(payload.events), named_entities(payload), planned, status)

    def _chunk(self, claim: Claim, work: Work, at: Progress, size: int) -> tuple[Progress, float]:
        """Store the next `size` rows (entities first, then launches); the time it took."""
        entities = work.entities[at.entities_done : at.entities_done + size]
        room = size - len(entities)
        planned = work.planned[at.launches_done : at.launches_done + room] if room > 0 else []
        started = time.perf_counter()
        with self.sessions.begin() as session:
            totals = (work.events, len(work.planned))
            after = queue.store_chunk(
                session.connection(), claim, at, entities, planned, totals, utcnow()
            )
        return after, time.perf_counter() - started

    def _next_size(self, size: int, seconds: float) -> int:
        if seconds <= 0:
            return MAX_CHUNK
        wanted = int(size * self.chunk_seconds / seconds)
        # Grow at most fourfold at a time: one fast chunk says little about the next.
        return max(MIN_CHUNK, min(MAX_CHUNK, wanted, size * 4))

    def _release(self, claim: Claim) -> None:
        with self.sessions.begin() as session:
            queue.release(session.connection(), claim)

    def _rules_of(self, version_id: int | None) -> RuleSet:
        """The rules of the stored version (compiled once per process), or the rules
        file for a delivery whose version is unknown or pruned."""
        if version_id not in self._rules:
            stored = None
            if version_id is not None:
                with self.sessions() as session:
                    stored = versions.get_version(session, version_id)
            self._rules[version_id] = (
                stored.rules() if stored is not None else load_rules_file(self.rules_file)
            )
        return self._rules[version_id]


def _check_account(claim: Claim, payload: Payload) -> None:
    """The account the webhook checked at a glance must be the one the body names."""
    account = payload.account
    if claim.account_id is not None and account.id != claim.account_id:
        raise PayloadError(
            f"field {account.id_field!r}: the decoded body names account {account.id}, "
            f"not {claim.account_id} as its first account[id] said"
        )
    if claim.account_subdomain is not None and account.subdomain != claim.account_subdomain:
        raise PayloadError(
            f"field 'account[subdomain]': the decoded body names {account.subdomain!r}, "
            f"not {claim.account_subdomain!r} as its first account[subdomain] said"
        )
