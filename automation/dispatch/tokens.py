"""Where the dispatcher gets its amoCRM access token.

Either a long-lived token from `AMOCRM_ACCESS_TOKEN` (nothing to refresh), or OAuth 2.0:
the token pair lives in the database, is refreshed shortly before it expires and once
after a 401. amoCRM's refresh tokens are single-use, so a refresh and the storing of
its new pair happen while holding the token row's lock: two dispatchers never refresh
at the same time, and the second one simply reads what the first stored.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from automation.amocrm.answers import TokenSet
from automation.amocrm.client import AmoCRMClient
from automation.config import Settings
from automation.errors import AutomationError, NoToken
from automation.store import oauth
from automation.store.oauth import StoredTokens

log = logging.getLogger("automation.tokens")

#: Refresh this long before the access token expires.
REFRESH_MARGIN = timedelta(minutes=5)
#: Re-read the stored token at most this often (another process may have refreshed).
CACHE_SECONDS = 30.0


def is_oauth(settings: Settings) -> bool:
    """OAuth needs the integration's id, secret and redirect URI."""
    return bool(
        settings.amocrm_client_id and settings.amocrm_client_secret and settings.amocrm_redirect_uri
    )


def missing_oauth_settings(settings: Settings) -> list[str]:
    """The variables an authorization-code exchange still needs, by their env names."""
    needed = {
        "AMOCRM_CLIENT_ID": settings.amocrm_client_id,
        "AMOCRM_CLIENT_SECRET": settings.amocrm_client_secret,
        "AMOCRM_REDIRECT_URI": settings.amocrm_redirect_uri,
        "AMOCRM_SUBDOMAIN (or AMOCRM_BASE_URL)": settings.amocrm_url,
    }
    return [name for name, value in needed.items() if not value]


def store_tokens(session: Session, tokens: TokenSet, now: datetime) -> StoredTokens:
    """Replace the stored pair (call inside the transaction that holds the row lock)."""
    stored = StoredTokens(tokens.access_token, tokens.refresh_token, tokens.expires_at)
    oauth.save(session, stored, now)
    return stored


class TokenStore:
    """Hands out a valid access token; thread-safe; never logs a token."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._oauth = is_oauth(settings)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at: datetime | None = None
        self._read_at = 0.0

    @property
    def last_token(self) -> str | None:
        """The token handed out last (no I/O): what a 401 refused."""
        return self._token

    def access_token(self) -> str:
        """The token to send now, refreshed first when it is about to expire."""
        if not self._oauth:
            if self._settings.amocrm_access_token is None:
                raise NoToken()
            self._token = self._settings.amocrm_access_token.get_secret_value()
            return self._token
        with self._lock:
            if self._token is None or time.monotonic() - self._read_at > CACHE_SECONDS:
                self._load()
            if (
                self._expires_at is not None
                and self._expires_at - datetime.now(UTC) < REFRESH_MARGIN
            ):
                self._refresh(rejected=self._token)
            assert self._token is not None
            return self._token

    def refresh_after_401(self, rejected: str | None) -> bool:
        """After a 401 with `rejected`: get a new token. False when that is impossible."""
        if not self._oauth:
            return False
        with self._lock:
            try:
                self._refresh(rejected=rejected)
            except AutomationError as exc:
                log.error("token refresh failed error=%s", exc)
                return False
            return True

    def _load(self) -> None:
        with self._sessions() as session:
            row = oauth.read(session)
            if row is None:
                row = self._seed(session)
            self._token, self._expires_at = row.access_token, row.expires_at
        self._read_at = time.monotonic()

    def _seed(self, session: Session) -> StoredTokens:
        """First start with OAuth: take the pair from the environment, if given."""
        settings = self._settings
        if settings.amocrm_refresh_token is None and settings.amocrm_access_token is None:
            raise NoToken()
        now = datetime.now(UTC)
        access = settings.amocrm_access_token
        refresh = settings.amocrm_refresh_token
        row = StoredTokens(
            access_token=access.get_secret_value() if access else "",
            refresh_token=refresh.get_secret_value() if refresh else None,
            # Unknown expiry of an env token without refresh token: use it until a 401.
            expires_at=None if access else now,
        )
        oauth.save(session, row, now)
        session.commit()
        return row

    def _refresh(self, rejected: str | None) -> None:
        """Refresh under the row lock, unless another process already did."""
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = oauth.locked(session)
            if row is None:
                raise NoToken()
            fresh = row.expires_at is None or row.expires_at - now >= REFRESH_MARGIN
            if row.access_token != rejected and fresh:
                log.info("token refreshed by another process; using it")
            else:
                row = store_tokens(session, self._call_refresh(row), now)
                log.info("token refreshed expires_at=%s", row.expires_at)
            self._token, self._expires_at = row.access_token, row.expires_at
        self._read_at = time.monotonic()

    def _call_refresh(self, row: StoredTokens) -> TokenSet:
        settings = self._settings
        if not row.refresh_token:
            raise NoToken("no refresh token stored: run `automation auth exchange CODE`")
        assert settings.amocrm_client_id and settings.amocrm_client_secret
        assert settings.amocrm_redirect_uri and settings.amocrm_url
        with AmoCRMClient.for_settings(settings, lambda: "") as client:
            return client.refresh_tokens(
                settings.amocrm_client_id,
                settings.amocrm_client_secret.get_secret_value(),
                row.refresh_token,
                settings.amocrm_redirect_uri,
            )


def exchange_code(settings: Settings, sessions: sessionmaker[Session], code: str) -> TokenSet:
    """`automation auth exchange CODE`: turn an authorization code into stored tokens."""
    missing = missing_oauth_settings(settings)
    if missing:
        raise NoToken(
            f"OAuth needs {' and '.join(missing)}: set {'them' if len(missing) > 1 else 'it'}"
        )
    assert settings.amocrm_client_id and settings.amocrm_client_secret
    assert settings.amocrm_redirect_uri and settings.amocrm_url
    with AmoCRMClient.for_settings(settings, lambda: "") as client:
        tokens = client.exchange_code(
            settings.amocrm_client_id,
            settings.amocrm_client_secret.get_secret_value(),
            code,
            settings.amocrm_redirect_uri,
        )
    with sessions.begin() as session:
        oauth.locked(session)
        store_tokens(session, tokens, datetime.now(UTC))
    return tokens
