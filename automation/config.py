"""Settings from the environment (and a `.env` file), read once and validated together.

The variable names are the interface contract of `design.md`; scripts depend on them.
Every bad variable is reported in one `ConfigError`, each line naming the variable,
what it accepts and what it got.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from automation.errors import ConfigError, Invalid

AMOCRM_DOMAINS = ("amocrm.ru", "kommo.com", "amocrm.com")
#: DATABASE_URL schemes the server runs on (`postgres` and `postgresql` mean psycopg 3).
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg")
#: Upper bounds that keep `now + timedelta(...)` inside the calendar (and sane).
MAX_PAUSE = 7 * 86400
MAX_DEAD_AFTER = 86400
#: Longest AMOCRM_TIMEOUT, in seconds: amoCRM answers in well under a second.
MAX_TIMEOUT = 300
MAX_RETENTION_DAYS = 36500
MAX_SESSION_HOURS = 24 * 30
MAX_PROXY_HOPS = 5


class Settings(BaseSettings):
    """Everything the server reads from its environment. Frozen once built."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, case_sensitive=False
    )

    database_url: str = "sqlite:///automation.db"
    rules_file: str = "rules.yaml"
    webhook_secret: SecretStr | None = None
    amocrm_subdomain: str | None = None
    amocrm_base_url: str | None = None
    amocrm_domain: Literal["amocrm.ru", "kommo.com", "amocrm.com"] = "amocrm.ru"
    amocrm_access_token: SecretStr | None = None
    amocrm_client_id: str | None = None
    amocrm_client_secret: SecretStr | None = None
    amocrm_redirect_uri: str | None = None
    amocrm_refresh_token: SecretStr | None = None
    amocrm_max_rps: float = Field(default=7.0, gt=0, le=1000, allow_inf_nan=False)
    amocrm_rate_margin_ms: int = Field(default=30, ge=0, le=1000)
    amocrm_account_id: int | None = Field(default=None, gt=0)
    amocrm_retry_uncertain: bool = False
    #: Seconds all sending pauses after amoCRM answers 403 (account blocked).
    amocrm_pause_on_403: float = Field(default=900.0, ge=0, le=MAX_PAUSE, allow_inf_nan=False)
    #: Attempts before a retryable failure becomes `failed`.
    amocrm_max_attempts: int = Field(default=8, ge=1, le=100)
    #: Seconds without a heartbeat after which a dispatcher counts as dead and the
    #: launches it left `sending` are recovered.
    dispatcher_dead_after: float = Field(default=30.0, gt=0, le=MAX_DEAD_AFTER, allow_inf_nan=False)
    #: (connect, read) seconds of every amoCRM call: `10` sets both, `3,10` each.
    amocrm_timeout: Annotated[tuple[float, float], NoDecode] = (3.05, 10.0)
    dry_run: bool | None = None
    admin_token: SecretStr | None = None
    #: A second console/API token that may read but never act.
    viewer_token: SecretStr | None = None
    #: IANA zone of the times the console shows (stored times stay UTC).
    display_timezone: str = "UTC"
    #: Hours a console login lasts, from the login on.
    console_session_hours: int = Field(default=12, ge=1, le=MAX_SESSION_HOURS)
    #: Mark the console's cookie `Secure` even when the request came over plain HTTP
    #: (TLS ended at a proxy that does not say so).
    console_secure_cookie: bool = False
    #: Reverse proxies in front of the server that append the client's address to
    #: X-Forwarded-For: the console's login lockout counts that address, not theirs.
    console_proxy_hops: int = Field(default=0, ge=0, le=MAX_PROXY_HOPS)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    log_format: Literal["text", "json"] = "text"
    #: Threaded web workers store the webhooks waiting at once in one transaction
    #: (store.groupcommit); off, each request commits its own.
    group_commit: bool = True
    #: Days settled launches and old deliveries are kept; None keeps them forever.
    retention_days: int | None = Field(default=None, gt=0, le=MAX_RETENTION_DAYS)

    @field_validator(
        "webhook_secret",
        "amocrm_access_token",
        "amocrm_client_secret",
        "amocrm_refresh_token",
        "admin_token",
        "viewer_token",
        "amocrm_subdomain",
        "amocrm_base_url",
        "amocrm_client_id",
        "amocrm_redirect_uri",
        "amocrm_account_id",
        "dry_run",
        "retention_days",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """`WEBHOOK_SECRET=` or `DRY_RUN=` in a .env file means "not set" (the default),
        not "the empty secret" nor a value to reject."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_is_a_path_segment(cls, value: SecretStr | None) -> SecretStr | None:
        """The secret is the webhook URL's last segment: a `/`, `?`, `#` or space in it
        would make every webhook miss the route (a 404 nobody can explain)."""
        if value is not None and not _PATH_SEGMENT.fullmatch(value.get_secret_value()):
            raise Invalid(f"expected {_EXPECTED['webhook_secret']}")
        return value

    @field_validator("display_timezone")
    @classmethod
    def _timezone_is_known(cls, value: str) -> str:
        """An unknown zone would fail at the first page shown, not at start."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise Invalid(f"expected {_EXPECTED['display_timezone']}") from None
        return value

    @field_validator("viewer_token")
    @classmethod
    def _viewer_differs_from_admin(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        """The same token for both roles would make every login ambiguous."""
        admin = info.data.get("admin_token")
        if value is not None and admin is not None and value == admin:
            raise Invalid("expected a token different from ADMIN_TOKEN")
        return value

    @field_validator("amocrm_base_url")
    @classmethod
    def _base_url_is_http(cls, value: str | None) -> str | None:
        return _http_url(value).rstrip("/") if value is not None else None

    @field_validator("amocrm_redirect_uri")
    @classmethod
    def _redirect_uri_is_http(cls, value: str | None) -> str | None:
        """amoCRM compares it with the integration's redirect URI: an http(s) URL."""
        return _http_url(value) if value is not None else None

    @field_validator("amocrm_subdomain")
    @classmethod
    def _subdomain_is_a_label(cls, value: str | None) -> str | None:
        """`mybrand.amocrm.ru` here would make the API URL `mybrand.amocrm.ru.amocrm.ru`
        and every real webhook a 403 (its `account[subdomain]` is `mybrand`)."""
        if value is None or _LABEL.fullmatch(value):
            return value
        label = value.split("://", 1)[-1].split(".", 1)[0].split("/", 1)[0].lower()
        suggestion = f"use AMOCRM_SUBDOMAIN={label}; " if _LABEL.fullmatch(label) else ""
        raise Invalid(
            "expected the account's subdomain alone (lowercase letters, digits and -)",
            f"{suggestion}for another domain set AMOCRM_BASE_URL",
        )

    @field_validator("database_url")
    @classmethod
    def _database_is_supported(cls, value: str) -> str:
        """Any other scheme would fail later, in SQLAlchemy, as a missing driver, and
        an unreadable URL as a traceback. (SQLAlchemy is imported here, not at the top:
        `--help` reads this module.)"""
        from sqlalchemy import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            driver: str | None = make_url(value).drivername
        except (ArgumentError, ValueError):  # ValueError: int() of a bad port
            driver = None
        if driver not in DATABASE_SCHEMES:
            raise Invalid(
                "expected a SQLite or PostgreSQL URL such as sqlite:///automation.db or "
                "postgresql://user:password@host/db (supported: sqlite, postgresql)"
            )
        return value

    @field_validator("amocrm_timeout", mode="before")
    @classmethod
    def _timeouts(cls, value: Any) -> Any:
        """`10` (both) or `3,10` (connect, read), each a number of seconds."""
        if not isinstance(value, str):
            return value
        parts = [part.strip() for part in value.split(",")]
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2) or not all(0 < n <= MAX_TIMEOUT for n in numbers):
            raise Invalid("expected " + _EXPECTED["amocrm_timeout"])
        return (numbers[0], numbers[-1])

    @model_validator(mode="after")
    def _dry_run_default(self) -> Settings:
        """Dry run is on when no way to authenticate is configured (design.md)."""
        if self.dry_run is None:
            object.__setattr__(self, "dry_run", not self.has_credentials)
        return self

    @property
    def has_credentials(self) -> bool:
        """A token in the environment, or an OAuth integration whose tokens
        `automation auth exchange` keeps in the database."""
        oauth = self.amocrm_client_id is not None and self.amocrm_client_secret is not None
        tokens = self.amocrm_access_token is not None or self.amocrm_refresh_token is not None
        return tokens or oauth

    @property
    def longest_transaction(self) -> float:
        """Seconds a transaction of ours may sit idle: the token refresh holds its row
        lock across one call to amoCRM. PostgreSQL ends a session idle in a transaction
        for longer (a process stopped by SIGSTOP or a VM pause), so its locks, the rate
        limit's above all, do not stall every other dispatcher until it resumes."""
        return sum(self.amocrm_timeout) + 30.0

    @property
    def is_dry_run(self) -> bool:
        return bool(self.dry_run)

    @property
    def amocrm_url(self) -> str | None:
        """Base URL of the account's API, or None when neither variable is set."""
        if self.amocrm_base_url:
            return self.amocrm_base_url
        if self.amocrm_subdomain:
            return f"https://{self.amocrm_subdomain}.{self.amocrm_domain}"
        return None

    def unmaskable(self) -> list[str]:
        """The environment names of amoCRM credentials too short to mask safely."""
        return [
            name.upper()
            for name in AMOCRM_CREDENTIALS
            if (value := getattr(self, name)) is not None
            and len(value.get_secret_value()) < UNMASKABLE_LENGTH
        ]

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with every secret replaced by `***`, and every other
        value spelled as its variable takes it (`AMOCRM_TIMEOUT=3.05,10.0`, not a
        Python tuple), so a line of `config show` can be pasted back."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "***"
            elif isinstance(value, tuple):
                value = ",".join(str(part) for part in value)
            elif isinstance(value, bool):
                value = str(value).lower()
            shown[name.upper()] = value
        return shown


#: What WEBHOOK_SECRET may hold: RFC 3986's unreserved characters.
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
#: One DNS label, as amoCRM spells subdomains.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: The password of a URL's `user:password@`, to be hidden in messages.
_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^@]*@")
#: Shorter secrets are accepted with a warning at start: they can be guessed.
SECRET_MIN_LENGTH = 16
#: amoCRM credentials shorter than this are warned about at start: masking them in
#: logs would either miss them or hide ordinary words (amoCRM's own are 40+ long).
UNMASKABLE_LENGTH = 8
#: The amoCRM credentials that error messages and logs mask.
AMOCRM_CREDENTIALS = ("amocrm_access_token", "amocrm_client_secret", "amocrm_refresh_token")
#: The settings typed SecretStr: error messages say "(hidden)" for their values.
_SECRETS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
)

_EXPECTED = {
    "webhook_secret": "letters, digits and . _ ~ - only (the webhook URL's last path segment)",
    "amocrm_domain": "one of " + ", ".join(AMOCRM_DOMAINS),
    "log_format": "one of text, json",
    "amocrm_max_rps": "a number of requests per second above 0, at most 1000",
    "amocrm_rate_margin_ms": "a whole number of milliseconds from 0 to 1000",
    "amocrm_account_id": "a positive integer",
    "max_body_bytes": "a positive integer (bytes)",
    "amocrm_retry_uncertain": "a boolean (1/0, true/false)",
    "dry_run": "a boolean (1/0, true/false)",
    "group_commit": "a boolean (1/0, true/false)",
    "amocrm_pause_on_403": f"a number of seconds from 0 to {MAX_PAUSE}",
    "amocrm_max_attempts": "an integer from 1 to 100",
    "dispatcher_dead_after": f"a number of seconds above 0, at most {MAX_DEAD_AFTER}",
    "retention_days": "a whole number of days > 0 (or unset to keep everything)",
    "amocrm_timeout": (
        f"seconds above 0, at most {MAX_TIMEOUT}: one number for connect and read, "
        "or CONNECT,READ such as 3,10"
    ),
    "display_timezone": "an IANA time zone such as UTC or Europe/Moscow",
    "console_session_hours": f"a whole number of hours from 1 to {MAX_SESSION_HOURS}",
    "console_secure_cookie": "a boolean (1/0, true/false)",
    "console_proxy_hops": f"a whole number of proxies from 0 to {MAX_PROXY_HOPS}",
}
#: What a variable accepts, said for a value above its upper bound, where the entry in
#: `_EXPECTED` names only the lower one.
_EXPECTED_AT_MOST = {
    "retention_days": f"at most {MAX_RETENTION_DAYS} days (or unset to keep everything)",
}


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | None = ".env"
) -> Settings:
    """Build `Settings` from `environ` (default: the process environment and `.env`).

    Raises `ConfigError` listing every invalid variable at once.
    """
    try:
        if environ is None:
            return Settings(_env_file=env_file)  # type: ignore[call-arg]
        values = {key.lower(): value for key, value in environ.items()}
        known = {name: values[name] for name in Settings.model_fields if name in values}
        return Settings(_env_file=None, **known)  # type: ignore[call-arg, arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        expected, hint = _reason(name, error)
        line = f"  {name.upper()}: {expected}, got {_shown(name, error)}"
        lines.append(f"{line}: {hint}" if hint else line)
    return "\n".join(lines)


def _reason(name: str, error: Any) -> tuple[str, str]:
    """Our validators' own words (pydantic would prefix them with "Value error, "),
    else what the table says the variable accepts; pydantic's message only for a field
    without an entry."""
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Invalid):
        return cause.expected, cause.hint
    if cause is not None:
        return str(cause), ""
    if error["type"] == "less_than_equal" and name in _EXPECTED_AT_MOST:
        return "expected " + _EXPECTED_AT_MOST[name], ""
    return "expected " + _EXPECTED.get(name, error["msg"]), ""


def _shown(name: str, error: Any) -> str:
    """The bad value as a message may show it: secrets hidden, a URL's password masked."""
    if name in _SECRETS:
        return "(hidden)"
    value = error.get("input")
    return repr(_URL_PASSWORD.sub(r"\1***@", value) if isinstance(value, str) else value)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise Invalid("expected a URL starting with http:// or https://")
    return value
