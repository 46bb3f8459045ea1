"""The console's login lockout: refused logins counted per client address.

After `limit` refused logins from one address within `window`, that address may not
try again (not even with the right token) until the oldest of them is `window` old:
at most `limit` guesses per window, however many workers, hosts or restarts. The
counts live in the database (`login_failures`) for exactly that reason; memory in
one gunicorn worker would give each worker, and each restart, a fresh allowance.

An attempt is judged and recorded in one transaction that holds the address:
PostgreSQL takes a transaction-scoped advisory lock on it, SQLite's BEGIN IMMEDIATE
holds the whole database. So two attempts at the same instant are counted one after
the other, and the eleventh guess cannot slip in beside the tenth.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session

from automation.store.models import LoginFailure

#: The width of `login_failures.address`: longer values (a forged header) are cut.
ADDRESS_LENGTH = 64
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def hold(session: Session, address: str) -> None:
    """Serialize attempts from `address` until the transaction ends (PostgreSQL; on
    SQLite the transaction already holds the write lock)."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.blake2b(f"login:{address}".encode(), digest_size=8).digest()
        session.execute(_LOCK, {"key": int.from_bytes(digest, "big", signed=True)})


def locked_until(
    session: Session, address: str, now: datetime, limit: int, window: timedelta
) -> datetime | None:
    """When `address` may try again, or None when it may try now: it is locked while
    `limit` of its failures are younger than `window`."""
    recent = session.scalars(
        select(LoginFailure.failed_at)
        .where(LoginFailure.address == address[:ADDRESS_LENGTH])
        .where(LoginFailure.failed_at > now - window)
        .order_by(LoginFailure.failed_at.desc())
        .limit(limit)
    ).all()
    if len(recent) < limit:
        return None
    return recent[-1] + window


def record_failure(session: Session, address: str, now: datetime, window: timedelta) -> int:
    """Store one refused login; forget every failure older than `window` (of any
    address); return how many failures `address` has within the window now."""
    session.execute(delete(LoginFailure).where(LoginFailure.failed_at <= now - window))
    session.execute(insert(LoginFailure).values(address=address[:ADDRESS_LENGTH], failed_at=now))
    counted = select(func.count()).where(
        LoginFailure.address == address[:ADDRESS_LENGTH], LoginFailure.failed_at > now - window
    )
    return int(session.execute(counted).scalar_one())
