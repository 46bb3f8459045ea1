"""This dispatcher's row in the registry: register, beat, notice a takeover, leave.

A dispatcher that stalls longer than DISPATCHER_DEAD_AFTER (SIGSTOP, a VM pause, a swap
storm) is declared dead by another, which stops its row and recovers its launches.
When it resumes, its row says so: it must not act on anything it held, and it must not
carry on under the dead name (on SQLite that made two dispatchers run at once). So it
checks its row before every call and, when stopped, comes back under a new name.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from automation import metrics
from automation.errors import ClaimLost, NotAlone
from automation.store import dispatchers, outbox
from automation.store.states import LaunchStatus

log = logging.getLogger("automation.dispatcher")

HEARTBEAT_EVERY = 2.0


def new_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Membership:
    """The registry row of one dispatcher process, and its heartbeat thread."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        dead_after: timedelta,
        wait: Callable[[float], bool],
    ) -> None:
        """`wait(seconds)` sleeps until the dispatcher is asked to stop (then True)."""
        self.sessions = sessions
        self.dead_after = dead_after
        self.id = new_id()
        #: True from `register` until the row is stopped (by us, or by another).
        self.registered = False
        self._wait = wait
        self._sqlite = sessions.kw["bind"].dialect.name == "sqlite"
        self._last_recovery = time.monotonic()
        self._said_buried: str | None = None

    def register(self, wait: bool) -> None:
        """Record this dispatcher under a new name; on SQLite, insist on being alone."""
        self.id = new_id()
        said_at = 0.0
        while True:
            now = datetime.now(UTC)
            with self.sessions.begin() as session:
                other = self._live_other(session, now) if self._sqlite else None
                if other is None:
                    host, pid = socket.gethostname(), os.getpid()
                    dispatchers.register(session, self.id, host, pid, now)
                    self.recover(session, now)
                    break
            message = (
                f"another dispatcher ({other}) runs on this SQLite database; only one "
                "may. Use PostgreSQL to run several."
            )
            if not wait:
                raise NotAlone(message)
            if time.monotonic() - said_at > 60:
                log.warning(
                    "%s Waiting for it to stop, or for its heartbeat to be older than "
                    "DISPATCHER_DEAD_AFTER=%gs (then it is dead: a killed one takes that long)",
                    message,
                    self.dead_after.total_seconds(),
                )
                said_at = time.monotonic()
            if self._wait(1):
                raise NotAlone(message)
        self.registered = True

    def _live_other(self, session: Session, now: datetime) -> str | None:
        return dispatchers.live_other(session, self.id, now, self.dead_after)

    def check(self, session: Session) -> None:
        """Before a call: raise `ClaimLost` when another dispatcher stopped our row."""
        if self.registered and dispatchers.is_stopped(session, self.id):
            raise ClaimLost(
                f"dispatcher {self.id} was declared dead by another (no heartbeat for "
                f"{self.dead_after.total_seconds():g}s): its claims were taken over"
            )

    def taken_over(self, problem: ClaimLost) -> None:
        """Drop everything held; the loop registers anew before its next call."""
        with self.sessions() as session:
            stopped = self.registered and dispatchers.is_stopped(session, self.id)
        if stopped:
            self.registered = False
            log.error("%s; it acts on none of them and registers anew", problem)
        else:
            log.error("claims taken over: %s; they are left to their new holder", problem)

    def beat_interval(self) -> float:
        return min(HEARTBEAT_EVERY, self.dead_after.total_seconds() / 4)

    def start_heartbeat(self) -> threading.Thread:
        """Beat from a thread of its own: a call stalled for its whole read timeout
        must not make this dispatcher look dead to the others."""
        thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        thread.start()
        return thread

    def _heartbeat_loop(self) -> None:
        while not self._wait(self.beat_interval()):
            dispatcher = self.id
            try:
                with self.sessions.begin() as session:
                    alive = dispatchers.beat(session, dispatcher, datetime.now(UTC))
            except SQLAlchemyError as exc:
                log.error("heartbeat failed error=%s", type(exc).__name__)
                continue
            if not alive and self.registered and self._said_buried != dispatcher:
                self._said_buried = dispatcher
                log.error("dispatcher %s was declared dead by another dispatcher", dispatcher)

    def maybe_recover(self) -> None:
        """Now and then, settle what dead dispatchers left behind."""
        if time.monotonic() - self._last_recovery < self.beat_interval():
            return
        self._last_recovery = time.monotonic()
        with self.sessions.begin() as session:
            self.recover(session, datetime.now(UTC))

    def recover(self, session: Session, now: datetime) -> None:
        """Declare dispatchers without a recent heartbeat dead, then settle what they
        left `sending`: first the registry, so that a dispatcher whose launches are
        taken over always finds its row stopped."""
        dispatchers.bury_dead(session, now, self.dead_after)
        live = dispatchers.live_ids(session, now, self.dead_after)
        pending, uncertain = outbox.recover_orphans(session, [*live, self.id], now)
        if pending or uncertain:
            log.warning("recovered orphaned launches pending=%s uncertain=%s", pending, uncertain)
            metrics.launches_settled(LaunchStatus.UNCERTAIN, uncertain)

    def unregister(self) -> None:
        """Give back what was claimed and not sent, and stop the row."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            outbox.release_claims(session, self.id, now)
            dispatchers.unregister(session, self.id, now)
        self.registered = False
