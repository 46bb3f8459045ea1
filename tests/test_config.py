"""WEBHOOK_SECRET is checked at start: a URL path segment, and long enough to guess hard."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from automation.config import Settings, load_settings
from automation.errors import ConfigError


@pytest.mark.parametrize("secret", ["with/slash", "with space", "q?x", "frag#x", "ünïcode"])
def test_a_secret_that_is_not_a_path_segment_refuses_to_start(secret: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"WEBHOOK_SECRET": secret})

    message = str(raised.value)
    assert "WEBHOOK_SECRET: expected letters, digits and . _ ~ - only" in message
    assert "got (hidden)" in message
    assert secret not in message


def test_every_unreserved_character_is_accepted() -> None:
    secret = "AZaz09._~-" * 2
    settings = load_settings({"WEBHOOK_SECRET": secret})

    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == secret


def said_at_start(
    make_app: Callable[[Settings], Any], settings: Settings, variable: str
) -> list[str]:
    """The messages that building an app logs on the `automation` logger about
    `variable` (the logger does not propagate, so caplog sees nothing)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("automation")
    logger.addHandler(handler)
    try:
        make_app(settings)
    finally:
        logger.removeHandler(handler)
    return [r.getMessage() for r in records if variable in r.getMessage()]


@pytest.mark.parametrize(("secret", "warned"), [("change-me", True), ("x" * 16, False)])
def test_a_short_secret_is_accepted_with_a_warning(
    make_settings: Callable[..., Settings],
    make_app: Callable[[Settings], Any],
    secret: str,
    warned: bool,
) -> None:
    warnings = said_at_start(make_app, make_settings(webhook_secret=secret), "WEBHOOK_SECRET")

    assert bool(warnings) is warned
    assert all(secret not in message for message in warnings)
    if warned:
        assert warnings[0].startswith(f"WEBHOOK_SECRET has {len(secret)} characters")


# ------------------------------------------------------------- every variable's message

#: One bad value for every setting that can have one; the message must name the
#: variable, say what it accepts, show the value once, and never be pydantic's words.
BAD_VALUES = {
    "database_url": "mysql://user:hunter2@db/app",
    "webhook_secret": "a/b",
    "amocrm_subdomain": "mybrand.amocrm.ru",
    "amocrm_base_url": "ftp://x",
    "amocrm_domain": "amocrm.de",
    "amocrm_redirect_uri": "example.com/oauth",
    "amocrm_max_rps": "2000",
    "amocrm_rate_margin_ms": "-1",
    "amocrm_account_id": "0",
    "amocrm_retry_uncertain": "maybe",
    "amocrm_pause_on_403": "inf",
    "amocrm_max_attempts": "0",
    "dispatcher_dead_after": "nan",
    "dry_run": "perhaps",
    "group_commit": "sometimes",
    "max_body_bytes": "-5",
    "log_format": "xml",
    "retention_days": "1.5",
    "amocrm_timeout": "3,10,20",
    "display_timezone": "MSK",
    "console_session_hours": "0",
    "console_secure_cookie": "sometimes",
    "console_proxy_hops": "-1",
}
#: Free text (any value is a value) or secrets whose only check is "set or not".
UNCHECKED = {
    "rules_file",
    "amocrm_access_token",
    "amocrm_client_id",
    "amocrm_client_secret",
    "amocrm_refresh_token",
    "admin_token",
    "viewer_token",  # checked against ADMIN_TOKEN: see the test below
}


def test_every_setting_is_covered_by_the_bad_value_test() -> None:
    assert set(Settings.model_fields) == (set(BAD_VALUES) | UNCHECKED)


@pytest.mark.parametrize(("name", "value"), BAD_VALUES.items())
def test_a_bad_value_gets_one_clean_line_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({name.upper(): value})

    head, line = str(raised.value).splitlines()
    assert head == "invalid settings:"
    assert line.startswith(f"  {name.upper()}: expected ")
    assert "Value error" not in line
    assert line.count(", got ") == 1
    assert "hunter2" not in line


@pytest.mark.parametrize(
    "name", [name for name, field in Settings.model_fields.items() if field.default is None]
)
def test_a_blank_optional_variable_means_unset(name: str) -> None:
    """`NAME=` in a .env file (or blanks) leaves the setting at its default."""
    assert getattr(load_settings({name.upper(): " "}), name) == getattr(load_settings({}), name)


@pytest.mark.parametrize(
    ("value", "timeouts"), [("10", (10.0, 10.0)), ("3, 20", (3.0, 20.0)), (None, (3.05, 10.0))]
)
def test_amocrm_timeout_is_one_number_for_both_or_connect_then_read(
    value: str | None, timeouts: tuple[float, float]
) -> None:
    given = {} if value is None else {"AMOCRM_TIMEOUT": value}

    assert load_settings(given).amocrm_timeout == timeouts


def test_a_viewer_token_equal_to_the_admin_token_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"ADMIN_TOKEN": "same-token-1234", "VIEWER_TOKEN": "same-token-1234"})

    assert str(raised.value).splitlines()[1] == (
        "  VIEWER_TOKEN: expected a token different from ADMIN_TOKEN, got (hidden)"
    )


def test_max_rps_states_the_real_range() -> None:
    with pytest.raises(ConfigError, match="above 0, at most 1000, got '2000'"):
        load_settings({"AMOCRM_MAX_RPS": "2000"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "expected a whole number of days > 0 (or unset to keep everything), got '0'"),
        ("99999999", "expected at most 36500 days (or unset to keep everything), got '99999999'"),
    ],
)
def test_retention_days_says_which_bound_the_value_breaks(value: str, expected: str) -> None:
    """A retention past the calendar would crash the dispatcher's daily prune."""
    with pytest.raises(ConfigError) as raised:
        load_settings({"RETENTION_DAYS": value})

    assert str(raised.value).splitlines()[1] == f"  RETENTION_DAYS: {expected}"


def test_a_base_url_that_is_not_http_reads_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"AMOCRM_BASE_URL": "ftp://x"})

    assert str(raised.value).splitlines()[1] == (
        "  AMOCRM_BASE_URL: expected a URL starting with http:// or https://, got 'ftp://x'"
    )


# --------------------------------------------------------------------- DATABASE_URL


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@x/y", "postgresql+psycopg2://u:hunter2@h/db", "nonsense"]
)
def test_only_sqlite_and_postgresql_are_accepted_password_hidden(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"DATABASE_URL": url})

    message = str(raised.value)
    assert "DATABASE_URL: expected a SQLite or PostgreSQL URL" in message
    assert "(supported: sqlite, postgresql)" in message
    assert "hunter2" not in message


def test_an_unreadable_database_url_is_a_setting_error_not_a_traceback() -> None:
    with pytest.raises(ConfigError, match=r"got 'postgresql://u:\*\*\*@h:port/db'"):
        load_settings({"DATABASE_URL": "postgresql://u:hunter2@h:port/db"})


@pytest.mark.parametrize(
    "url", ["sqlite:///automation.db", "sqlite://", "postgresql://u:p@h/db", "postgres://h/db"]
)
def test_sqlite_and_postgresql_urls_are_accepted(url: str) -> None:
    assert load_settings({"DATABASE_URL": url}).database_url == url


# ------------------------------------------------------------------ AMOCRM_SUBDOMAIN


@pytest.mark.parametrize(
    "given", ["mybrand.amocrm.ru", "https://mybrand.kommo.com/", "MyBrand.amocrm.ru"]
)
def test_a_subdomain_with_a_domain_or_scheme_suggests_its_first_label(given: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"AMOCRM_SUBDOMAIN": given})

    assert str(raised.value).splitlines()[1] == (
        "  AMOCRM_SUBDOMAIN: expected the account's subdomain alone (lowercase letters, "
        f"digits and -), got {given!r}: use AMOCRM_SUBDOMAIN=mybrand; for another domain "
        "set AMOCRM_BASE_URL"
    )


@pytest.mark.parametrize("given", ["my_brand", "-x", "a b"])
def test_a_subdomain_with_other_characters_is_refused(given: str) -> None:
    with pytest.raises(ConfigError, match="AMOCRM_SUBDOMAIN: expected the account's subdomain"):
        load_settings({"AMOCRM_SUBDOMAIN": given})


def test_a_bare_subdomain_makes_the_api_url() -> None:
    settings = load_settings({"AMOCRM_SUBDOMAIN": "my-brand2"})

    assert settings.amocrm_url == "https://my-brand2.amocrm.ru"


@pytest.mark.parametrize(("secret", "warned"), [("y", True), ("x" * 40, False)])
def test_an_amocrm_secret_too_short_to_mask_is_warned_about_at_start(
    make_settings: Callable[..., Settings],
    make_app: Callable[[Settings], Any],
    secret: str,
    warned: bool,
) -> None:
    settings = make_settings(amocrm_client_id="id", amocrm_client_secret=secret)

    warnings = said_at_start(make_app, settings, "AMOCRM_CLIENT_SECRET")
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].startswith(
            "AMOCRM_CLIENT_SECRET is shorter than 8 characters: too short to mask safely"
        )


def test_every_value_config_show_prints_reads_back_as_the_same_setting() -> None:
    """`config show` is where an operator copies a setting from: a line pasted into the
    environment must mean what it showed (AMOCRM_TIMEOUT once printed a Python tuple,
    `(3.05, 10.0)`, which the setting refuses)."""
    given = {"AMOCRM_TIMEOUT": "2.5,20", "DRY_RUN": "false", "AMOCRM_SUBDOMAIN": "shop"}
    settings = load_settings(given)
    shown = settings.masked()
    pasted = {name: str(value) for name, value in shown.items() if value not in (None, "***")}

    assert shown["AMOCRM_TIMEOUT"] == "2.5,20.0"
    assert load_settings(pasted).masked() == shown
