"""OAuth tokens in the database: exchange, refresh before expiry, one refresher at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from automation.cli import main
from automation.config import Settings
from automation.dispatch import loop as dispatch
from automation.dispatch.tokens import TokenStore, exchange_code
from automation.errors import NoToken
from automation.store import budget
from automation.store.models import Launch, OAuthToken, RateLimit
from automation.store.states import LaunchStatus
from tests.fake_amocrm import (
    ACCESS_TOKEN,
    AUTH_CODE,
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    REFRESH_TOKEN,
    FakeAmoCRM,
)
from tests.launches import add_launches


@pytest.fixture
def oauth_settings(make_settings: Callable[..., Settings], fake: FakeAmoCRM) -> Settings:
    return make_settings(
        amocrm_base_url=fake.url,
        amocrm_access_token=ACCESS_TOKEN,
        amocrm_refresh_token=REFRESH_TOKEN,
        amocrm_client_id=CLIENT_ID,
        amocrm_client_secret=CLIENT_SECRET,
        amocrm_redirect_uri=REDIRECT_URI,
    )


@pytest.fixture
def integration_settings(make_settings: Callable[..., Settings], fake: FakeAmoCRM) -> Settings:
    """The README's OAuth set-up before `auth exchange`: an integration, no token yet."""
    return make_settings(
        amocrm_base_url=fake.url,
        amocrm_client_id=CLIENT_ID,
        amocrm_client_secret=CLIENT_SECRET,
        amocrm_redirect_uri=REDIRECT_URI,
    )


def oauth_calls(fake: FakeAmoCRM) -> int:
    return sum(1 for call in fake.calls if call.path == "/oauth2/access_token")


def test_exchange_stores_the_pair_and_the_store_hands_it_out(
    oauth_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    tokens = exchange_code(oauth_settings, sessions, AUTH_CODE)

    assert tokens.access_token == fake.access_token
    with sessions() as session:
        row = session.get(OAuthToken, 1)
        assert row is not None
        assert (row.access_token, row.refresh_token) == (fake.access_token, fake.refresh_token)
    assert TokenStore(oauth_settings, sessions).access_token() == fake.access_token


def test_a_token_about_to_expire_is_refreshed_before_use(
    oauth_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    exchange_code(oauth_settings, sessions, AUTH_CODE)
    with sessions.begin() as session:
        session.execute(
            update(OAuthToken).values(expires_at=datetime.now(UTC) + timedelta(minutes=1))
        )
    old = fake.access_token

    token = TokenStore(oauth_settings, sessions).access_token()

    assert token == fake.access_token != old
    with sessions() as session:
        row = session.get(OAuthToken, 1)
        assert row is not None and row.expires_at is not None
        assert row.expires_at > datetime.now(UTC) + timedelta(hours=23)


def test_two_stores_refreshing_at_once_spend_the_refresh_token_once(
    oauth_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    exchange_code(oauth_settings, sessions, AUTH_CODE)
    rejected = fake.access_token
    fake.expire_token()
    before = oauth_calls(fake)
    stores = [TokenStore(oauth_settings, sessions) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[bool] = []

    def refresh(store: TokenStore) -> None:
        barrier.wait()
        results.append(store.refresh_after_401(rejected))

    threads = [threading.Thread(target=refresh, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results == [True] * 4
    assert oauth_calls(fake) - before == 1  # the others read what the first stored
    assert {store.last_token for store in stores} == {fake.access_token}


def test_a_long_lived_token_cannot_be_refreshed(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session]
) -> None:
    store = TokenStore(make_settings(amocrm_access_token="long-lived"), sessions)
    assert store.access_token() == "long-lived"
    assert store.refresh_after_401("long-lived") is False


def test_oauth_without_any_token_says_how_to_get_one(
    integration_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    with pytest.raises(NoToken, match=r"run `automation auth exchange CODE`"):
        TokenStore(integration_settings, sessions).access_token()


@pytest.fixture
def exchange_env(database_url: str, rules_file: Path, fake: FakeAmoCRM) -> dict[str, str]:
    """An operator's shell for `auth exchange`: the integration set up, the fake as amoCRM."""
    return {
        "DATABASE_URL": database_url,
        "RULES_FILE": str(rules_file),
        "AMOCRM_BASE_URL": fake.url,
        "AMOCRM_CLIENT_ID": CLIENT_ID,
        "AMOCRM_CLIENT_SECRET": CLIENT_SECRET,
        "AMOCRM_REDIRECT_URI": REDIRECT_URI,
    }


def test_auth_exchange_command_stores_tokens(
    exchange_env: dict[str, str], fake: FakeAmoCRM, sessions: sessionmaker[Session]
) -> None:
    env = exchange_env
    result = CliRunner().invoke(main, ["auth", "exchange", AUTH_CODE], env=env)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("tokens stored; the access token expires at ")
    assert CLIENT_SECRET not in result.output
    with sessions() as session:
        row = session.get(OAuthToken, 1)
        assert row is not None and row.access_token == fake.access_token


def test_an_oauth_integration_sends_for_real_with_the_exchanged_tokens(
    integration_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    """README's OAuth set-up: client id and secret in the environment, tokens from
    `auth exchange` in the database. That is a way to authenticate, so no dry run."""
    settings = integration_settings
    assert not settings.is_dry_run
    exchange_code(settings, sessions, AUTH_CODE)
    add_launches(sessions, 2)

    dispatch.build(settings, sessions).run(once=True)

    assert len(fake.launches()) == 2


def test_an_oauth_integration_without_tokens_yet_holds_the_launches_and_says_why(
    integration_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    settings = integration_settings
    add_launches(sessions, 2)

    dispatch.build(settings, sessions).run(once=True)

    assert fake.salesbot_calls() == []
    with sessions() as session:
        launches = session.scalars(select(Launch)).all()
        assert [(row.status, row.retries) for row in launches] == [(LaunchStatus.PENDING, 0)] * 2
        assert all("auth exchange" in (row.reason or "") for row in launches)
        hold = session.get(RateLimit, budget.NAME)
        assert hold is not None and hold.hold_until is not None
        assert "no amoCRM token" in (hold.hold_reason or "")


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        ("AMOCRM_REDIRECT_URI", "AMOCRM_REDIRECT_URI"),
        ("AMOCRM_CLIENT_ID", "AMOCRM_CLIENT_ID"),
        ("AMOCRM_BASE_URL", "AMOCRM_SUBDOMAIN (or AMOCRM_BASE_URL)"),
    ],
)
def test_auth_exchange_names_only_the_oauth_variable_that_is_missing(
    exchange_env: dict[str, str], unset: str, named: str
) -> None:
    env = {name: value for name, value in exchange_env.items() if name != unset}

    result = CliRunner().invoke(main, ["auth", "exchange", AUTH_CODE], env=env)

    assert result.exit_code == 1
    assert result.output == f"Error: OAuth needs {named}: set it\n"


def test_auth_exchange_loads_no_rules(exchange_env: dict[str, str], tmp_path: Path) -> None:
    env = {**exchange_env, "RULES_FILE": str(tmp_path / "absent.yaml")}
    result = CliRunner().invoke(main, ["auth", "exchange", AUTH_CODE], env=env)

    assert result.exit_code == 0, result.output
    assert "rules" not in result.output
