"""The account's OAuth token pair: one row, replaced whole under its lock.

amoCRM's refresh tokens are single-use, so whoever refreshes holds the row's lock
(`locked`) from reading the old pair until the new one is stored (`save`): a second
process waits, then reads what the first stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from automation.store.database import for_update
from automation.store.models import OAuthToken

#: The id of the one token row.
TOKEN_ROW = 1


@dataclass(frozen=True, slots=True)
class StoredTokens:
    """The stored pair; `expires_at` None means "unknown: use it until a 401"."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None

    @classmethod
    def from_row(cls, row: OAuthToken) -> StoredTokens:
        return cls(row.access_token, row.refresh_token, row.expires_at)


def read(session: Session) -> StoredTokens | None:
    """The stored pair without a lock, None when none was stored yet."""
    row = session.get(OAuthToken, TOKEN_ROW)
    return StoredTokens.from_row(row) if row is not None else None


def locked(session: Session) -> StoredTokens | None:
    """The stored pair, its row locked until the transaction ends (PostgreSQL
    `FOR UPDATE`; SQLite holds its write lock from BEGIN)."""
    query = for_update(session, select(OAuthToken).where(OAuthToken.id == TOKEN_ROW))
    row = session.execute(query).scalar_one_or_none()
    return StoredTokens.from_row(row) if row is not None else None


def save(session: Session, tokens: StoredTokens, now: datetime) -> None:
    """Replace the stored pair (inside the transaction that holds the row lock)."""
    row = session.get(OAuthToken, TOKEN_ROW)
    if row is None:
        row = OAuthToken(id=TOKEN_ROW, access_token="", updated_at=now)
        session.add(row)
    row.access_token = tokens.access_token
    row.refresh_token = tokens.refresh_token
    row.expires_at = tokens.expires_at
    row.updated_at = now
