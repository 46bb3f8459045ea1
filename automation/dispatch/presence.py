"""A dispatcher's presence among the others: its row in the registry, its heartbeat
(from a thread of its own) and the recovery of what dead dispatchers left `sending`.

On SQLite only one dispatcher may run: a second one waits (or, asked not to, raises
`NotAlone`) while the first one's heartbeat is fresh.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from automation import metrics
from automation.errors import NotAlone
from automation.store import dispatchers, outbox
from automation.store.states import LaunchStatus

log = logging.getLogger("automation.dispatcher")

#: Seconds between heartbeats (at most a quarter of DISPATCHER_DEAD_AFTER).
HEARTBEAT_EVERY = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Presence:
    """The registry side of `Dispatcher` (a base class: the loop calls these in turn)."""

    sessions: sessionmaker[Session]
    id: str
    dead_after: timedelta
    _stopping: threading.Event
    _sqlite: bool
    _last_recovery: float

    @property
    def dry_run(self) -> bool:
        raise NotImplementedError

    def _register(self, wait: bool) -> None:
        """Record this dispatcher; on SQLite, insist on being the only one."""
        said_at = 0.0
        while True:
            now = utcnow()
            with self.sessions.begin() as session:
                other = self._live_other(session, now) if self._sqlite else None
                if other is None:
                    host, pid = socket.gethostname(), os.getpid()
                    dispatchers.register(session, self.id, host, pid, now)
                    self._recover(session, now)
                    break
            message = (
                f"another dispatcher ({other}) runs on this SQLite database; only one "
                "may. Use PostgreSQL to run several."
            )
            if not wait:
                raise NotAlone(message)
            if time.monotonic() - said_at > 60:
                log.warning("%s Waiting for it to stop", message)
                said_at = time.monotonic()
            if self._stopping.wait(1):
                raise NotAlone(message)
        log.info("dispatcher started id=%s dry_run=%s", self.id, self.dry_run)

    def _live_other(self, session: Session, now: datetime) -> str | None:
        return dispatchers.live_other(session, self.id, now, self.dead_after)

    def _beat_interval(self) -> float:
        return min(HEARTBEAT_EVERY, self.dead_after.total_seconds() / 4)

    def _start_heartbeat(self) -> threading.Thread:
        """Beat from a thread of its own: a call stalled for its whole read timeout
        must not make this dispatcher look dead to the others."""
        thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        thread.start()
        return thread

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self._beat_interval()):
            try:
                with self.sessions.begin() as session:
                    dispatchers.beat(session, self.id, utcnow())
            except SQLAlchemyError as exc:
                log.error("heartbeat failed error=%s", type(exc).__name__)

    def _maybe_recover(self) -> None:
        """Now and then, settle what dead dispatchers left behind."""
        if time.monotonic() - self._last_recovery < self._beat_interval():
            return
        self._last_recovery = time.monotonic()
        with self.sessions.begin() as session:
            self._recover(session, utcnow())

    def _recover(self, session: Session, now: datetime) -> None:
        """Settle what dead dispatchers left `sending`."""
        live = dispatchers.live_ids(session, now, self.dead_after)
        pending, uncertain = outbox.recover_orphans(session, [*live, self.id], now)
        if pending or uncertain:
            log.warning("recovered orphaned launches pending=%s uncertain=%s", pending, uncertain)
            metrics.launches_settled(LaunchStatus.UNCERTAIN, uncertain)
        dispatchers.bury_dead(session, now, self.dead_after)
