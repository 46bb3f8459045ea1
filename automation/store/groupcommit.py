"""Group commit: one transaction and one fsync for every webhook waiting at that moment.

With `synchronous=FULL`, SQLite's commit waits for the disk, and only one writer
commits at a time: one webhook per fsync bounds intake at the disk's fsync rate, however
many threads decode. So in a threaded web process the request threads decode and match
as before, then hand their prepared rows to the process's one `Committer` thread. It
takes every webhook waiting, stores each inside its own SAVEPOINT (a failure rolls back
that webhook alone, which answers 503), commits once, and only then releases the
waiting requests, which only then answer 200.

No added latency at low load: the committer never waits to gather a batch. A webhook
that arrives while a commit is in flight waits for that commit and goes in the next
batch with everyone else who arrived meanwhile. A batch is bounded (`max_batch`), and
so is a webhook's wait for its turn (`max_wait`): past it, it leaves the queue unstored
and answers 503, which amoCRM retries.

Webhooks of one batch are stored one after another in one transaction, so each sees
the rows of those before it: dedupe keys, cooldowns and every other check that reads
earlier launches hold inside a batch as they do across batches.

On PostgreSQL several processes (or hosts) commit batches at once, and the
one-bot-per-chat guard locks every chat a launch touches. Locked webhook by webhook,
a batch holding chat A and waiting for B could meet another holding B and waiting for
A: a deadlock, which PostgreSQL ends by failing one batch. So a batch takes the locks
of all its webhooks first, once, in the guard's one sorted order, before its first
SAVEPOINT (a lock taken inside a savepoint that rolls back would be released with it).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from automation.errors import CommitterUnavailable
from automation.store import chatguard
from automation.store.intake import Enqueued, Rows, store

log = logging.getLogger("automation.groupcommit")

#: Most webhooks one transaction stores: bounds how long the write lock is held.
MAX_BATCH = 64
#: Longest a webhook waits for its turn before it answers 503 unstored, in seconds.
MAX_WAIT = 10.0


@dataclass(eq=False, slots=True)
class _Ticket:
    """One webhook handed to the committer, and what became of it."""

    rows: Rows
    done: threading.Event = field(default_factory=threading.Event)
    taken: bool = False
    stored: Enqueued | None = None
    error: BaseException | None = None


class Committer:
    """The one thread of a web process that writes webhooks, a batch per commit.

    Started on first use in the process that uses it (a thread does not survive
    gunicorn's fork) and stopped at exit, after the batch in hand and every webhook
    already waiting: each of those requests still gets its answer.
    """

    def __init__(
        self, engine: Engine, *, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT
    ) -> None:
        self.engine, self.max_batch, self.max_wait = engine, max_batch, max_wait
        self._pid: int | None = None
        self._waiting: deque[_Ticket] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._held: Connection | None = None

    def store(self, rows: Rows) -> Enqueued:
        """Store a webhook's rows; return once the transaction holding them committed.

        Raises what storing raised (a SQLAlchemyError: nothing of this webhook is
        stored), or `CommitterUnavailable` when stopping or after `max_wait` in the
        queue (then it never will be stored).
        """
        ticket = _Ticket(rows)
        with self._ready:
            self._start_in_this_process()
            if self._stopping:
                raise CommitterUnavailable("the server is stopping; the webhook was not stored")
            self._waiting.append(ticket)
            self._ready.notify()
        if not ticket.done.wait(self.max_wait):
            self._withdraw(ticket)
        ticket.done.wait()  # taken into a batch: its commit is under way, wait for it
        if ticket.error is not None:
            raise ticket.error
        assert ticket.stored is not None
        return ticket.stored

    def stop(self, timeout: float = 30) -> None:
        """Finish the batch in hand and every webhook waiting, then end the thread."""
        with self._ready:
            if self._pid != os.getpid():
                return  # never started here (or inherited from a parent's fork)
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _withdraw(self, ticket: _Ticket) -> None:
        """Out of the queue unstored, unless the committer took it meanwhile."""
        with self._ready:
            if ticket.taken:
                return
            self._waiting.remove(ticket)
        raise CommitterUnavailable(
            f"the webhook waited {self.max_wait:g}s for the database; it was not stored, retry"
        )

    def _start_in_this_process(self) -> None:
        """Start the thread on first use in this process (called under the lock)."""
        if self._pid == os.getpid():
            return
        self._pid, self._stopping, self._waiting = os.getpid(), False, deque()
        self._held = None  # a parent's connection is not this process's to use
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _run(self) -> None:
        log.debug("committer started pid=%s", os.getpid())
        while (batch := self._next_batch()) is not None:
            self._commit(batch)
        self._drop_connection()
        log.debug("committer stopped pid=%s", os.getpid())

    def _next_batch(self) -> list[_Ticket] | None:
        """Every webhook waiting (up to `max_batch`); None once stopping and drained."""
        with self._ready:
            while not self._waiting and not self._stopping:
                self._ready.wait()
            if not self._waiting:
                return None
            batch = [
                self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch))
            ]
            for ticket in batch:
                ticket.taken = True
            return batch

    def _commit(self, batch: list[_Ticket]) -> None:
        """One transaction for the batch; every request released after its outcome."""
        started = time.perf_counter()
        try:
            connection = self._connection()
            with connection.begin():
                chatguard.lock(connection, [p for ticket in batch for p in ticket.rows.planned()])
                for ticket in batch:
                    _store_one(connection, ticket)
        except Exception as exc:  # no connection, or the commit failed: none is stored
            self._drop_connection()
            for ticket in batch:
                ticket.stored, ticket.error = None, exc
        finally:
            for ticket in batch:
                ticket.done.set()
        log.debug("batch webhooks=%s ms=%.1f", len(batch), (time.perf_counter() - started) * 1000)

    def _connection(self) -> Connection:
        """The committer's own connection, kept between batches (a pool checkout per
        batch cost more than the batch's SAVEPOINTs); a failed batch drops it."""
        if self._held is None:
            self._held = self.engine.connect()
        return self._held

    def _drop_connection(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):  # a broken connection may not close cleanly
                held.invalidate()
                held.close()


def _store_one(connection: Connection, ticket: _Ticket) -> None:
    """One webhook inside its own SAVEPOINT: its failure rolls back only its rows.

    The SAVEPOINT statements go straight to the driver: through SQLAlchemy's
    `begin_nested` they cost a third of the committer's time. A failure of the
    savepoint itself (a lost connection) propagates and fails the batch: then nothing
    of it committed, and every webhook of it answers 503.
    """
    _savepoint(connection, "SAVEPOINT webhook")
    try:
        ticket.stored = store(connection, ticket.rows, locked=True)
    except Exception as exc:
        _savepoint(connection, "ROLLBACK TO SAVEPOINT webhook")
        ticket.error = exc
    else:
        _savepoint(connection, "RELEASE SAVEPOINT webhook")


def _savepoint(connection: Connection, statement: str) -> None:
    """Run a SAVEPOINT statement on the driver's cursor, errors as SQLAlchemy's."""
    dbapi = connection.dialect.loaded_dbapi
    try:
        cursor = connection.connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
    except dbapi.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, dbapi.Error, dialect=connection.dialect
        ) from exc
