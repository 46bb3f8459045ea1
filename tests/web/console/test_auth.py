"""Who may see and do what in the console: every route, every kind of visitor."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time

from automation.config import Settings
from automation.store.states import LaunchStatus
from automation.web.console import auth
from tests.web.console.conftest import ADMIN, VIEWER, csrf_token, log_in

READ_PAGES = [
    "/ui/",
    "/ui/launches",
    "/ui/launches?status=failed",
    "/ui/rules",
    "/ui/deliveries",
]


def test_without_admin_token_the_console_and_the_root_are_plain_404s(
    make_app: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    client = make_app(make_settings(viewer_token=VIEWER)).test_client()
    for path in ["/", "/ui/", "/ui/login", "/ui/launches", "/ui/static/console.css"]:
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.is_json, path


def test_the_root_redirects_to_the_console_when_it_is_on(anonymous: FlaskClient) -> None:
    answer = anonymous.get("/")
    assert answer.status_code == 302
    assert answer.location == "/ui/"


@pytest.mark.parametrize("path", [*READ_PAGES, "/ui/launches/1", "/ui/deliveries/1"])
def test_anonymous_visitors_are_sent_to_the_login_page(anonymous: FlaskClient, path: str) -> None:
    answer = anonymous.get(path)
    assert answer.status_code == 302
    assert answer.location.startswith("/ui/login?next=")


def test_a_live_refresh_after_the_session_ended_sends_the_whole_page_to_login(
    anonymous: FlaskClient,
) -> None:
    answer = anonymous.get("/ui/launches?rule=x", headers={"HX-Request": "true"})
    assert answer.status_code == 204
    assert answer.headers["HX-Redirect"] == "/ui/login?next=/ui/launches?rule%3Dx"


def test_the_login_page_has_one_password_field_named_token(anonymous: FlaskClient) -> None:
    page = anonymous.get("/ui/login").get_data(as_text=True)
    assert page.count("<input") == 3  # csrf, next, token
    assert 'name="token" type="password"' in page
    assert 'for="token"' in page


@pytest.mark.parametrize("token", [ADMIN, VIEWER])
@pytest.mark.parametrize("path", READ_PAGES)
def test_admin_and_viewer_read_every_page(
    console_app: Any, token: str, path: str, add_launch: Callable[..., int]
) -> None:
    add_launch(LaunchStatus.FAILED)
    client = console_app.test_client()
    log_in(client, token)
    assert client.get(path).status_code == 200


def test_a_login_sets_a_strict_httponly_cookie_scoped_to_the_console(
    anonymous: FlaskClient,
) -> None:
    answer = log_in(anonymous, ADMIN)
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP here, and no setting asks for it


def test_the_cookie_is_secure_over_https(anonymous: FlaskClient) -> None:
    token = csrf_token(anonymous)
    answer = anonymous.post(
        "/ui/login",
        data={"token": ADMIN, "csrf_token": token},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/ui/login"},
    )
    assert answer.status_code == 302
    assert "Secure" in answer.headers["Set-Cookie"]


def test_the_cookie_is_secure_when_the_setting_says_so(
    make_app: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    app = make_app(make_settings(admin_token=ADMIN, console_secure_cookie=True))
    answer = log_in(app.test_client(), ADMIN)
    assert "Secure" in answer.headers["Set-Cookie"]


def test_a_wrong_token_is_refused_logged_without_the_token_and_slowed(
    anonymous: FlaskClient,
    console_app: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(auth.time, "sleep", waits.append)
    console_app.config["CONSOLE_FAILED_LOGIN_DELAY"] = 1.5
    with caplog.at_level(logging.WARNING, logger="automation.console"):
        answer = anonymous.post(
            "/ui/login", data={"token": "guess-123", "csrf_token": csrf_token(anonymous)}
        )
    assert answer.status_code == 401
    assert "wrong token" in answer.get_data(as_text=True)
    assert waits == [1.5]
    assert "login refused" in caplog.text
    assert "guess-123" not in caplog.text
    assert anonymous.get("/ui/").status_code == 302  # still not logged in


def test_a_prefix_of_the_token_is_not_the_token(anonymous: FlaskClient) -> None:
    answer = anonymous.post(
        "/ui/login", data={"token": ADMIN[:-1], "csrf_token": csrf_token(anonymous)}
    )
    assert answer.status_code == 401


def test_a_session_older_than_its_lifetime_must_log_in_again(console_app: Any) -> None:
    client = console_app.test_client()
    with freeze_time("2026-12-01 08:00:00"):
        log_in(client, ADMIN)
        assert client.get("/ui/").status_code == 200
    with freeze_time("2026-12-01 19:59:00"):  # the default lifetime is 12 hours
        assert client.get("/ui/").status_code == 200
    with freeze_time("2026-12-01 20:01:00"):
        answer = client.get("/ui/")
    assert answer.status_code == 302
    assert answer.location.startswith("/ui/login")


def test_logging_out_ends_the_session(admin: FlaskClient) -> None:
    answer = admin.post("/ui/logout", data={"csrf_token": csrf_token(admin, "/ui/")})
    assert answer.status_code == 302
    assert admin.get("/ui/").status_code == 302


def test_a_cookie_signed_for_other_tokens_is_worthless(
    make_app: Callable[[Settings], Any], make_settings: Callable[..., Settings], admin: FlaskClient
) -> None:
    other = make_app(make_settings(admin_token="another-admin-token-0123456789")).test_client()
    cookie = admin.get_cookie("automation_console", path="/ui")
    assert cookie is not None
    other.set_cookie("automation_console", cookie.value, path="/ui")
    assert other.get("/ui/").status_code == 302


def test_after_login_the_visitor_lands_where_they_wanted_but_never_off_site(
    anonymous: FlaskClient,
) -> None:
    token = csrf_token(anonymous)
    answer = anonymous.post(
        "/ui/login", data={"token": VIEWER, "csrf_token": token, "next": "/ui/rules"}
    )
    assert answer.location == "/ui/rules"
    other = anonymous.application.test_client()
    token = csrf_token(other)
    answer = other.post(
        "/ui/login", data={"token": VIEWER, "csrf_token": token, "next": "//evil.example/"}
    )
    assert answer.location == "/ui/"


# ---------------------------------------------------------------------------- CSRF


def test_a_post_without_the_form_token_is_refused_and_changes_nothing(
    admin: FlaskClient, add_launch: Callable[..., int]
) -> None:
    launch = add_launch(LaunchStatus.PENDING)
    answer = admin.post(f"/ui/launches/{launch}/cancel")
    assert answer.status_code == 403
    assert "pending" in admin.get(f"/ui/launches/{launch}").get_data(as_text=True)
    assert "cancelled" not in admin.get(f"/ui/launches/{launch}").get_data(as_text=True)


def test_a_post_with_another_sessions_token_is_refused(
    admin: FlaskClient, console_app: Any, add_launch: Callable[..., int]
) -> None:
    launch = add_launch(LaunchStatus.PENDING)
    someone_else = console_app.test_client()
    log_in(someone_else, ADMIN)
    foreign = csrf_token(someone_else, "/ui/")
    answer = admin.post(f"/ui/launches/{launch}/cancel", data={"csrf_token": foreign})
    assert answer.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "null"},
    ],
)
def test_a_cross_site_post_with_a_valid_cookie_and_token_is_refused(
    admin: FlaskClient, add_launch: Callable[..., int], headers: dict[str, str]
) -> None:
    launch = add_launch(LaunchStatus.PENDING)
    token = csrf_token(admin, f"/ui/launches/{launch}")
    answer = admin.post(
        f"/ui/launches/{launch}/cancel", data={"csrf_token": token}, headers=headers
    )
    assert answer.status_code == 403
    assert "another site" in answer.get_data(as_text=True)
    page = admin.get(f"/ui/launches/{launch}").get_data(as_text=True)
    assert "st-pending" in page


def test_a_same_origin_post_from_a_browser_is_accepted(
    admin: FlaskClient, add_launch: Callable[..., int]
) -> None:
    launch = add_launch(LaunchStatus.PENDING)
    token = csrf_token(admin, f"/ui/launches/{launch}")
    headers = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    answer = admin.post(
        f"/ui/launches/{launch}/cancel", data={"csrf_token": token}, headers=headers
    )
    assert answer.status_code == 302


def test_the_login_form_itself_needs_its_token(anonymous: FlaskClient) -> None:
    assert anonymous.post("/ui/login", data={"token": ADMIN}).status_code == 403
    assert anonymous.get("/ui/").status_code == 302


def test_the_webhook_needs_no_form_token(
    console_app: Any, webhook_body: Callable[[str], bytes]
) -> None:
    answer = console_app.test_client().post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.status_code == 200


# ----------------------------------------------------------------------- viewers


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ui/launches/{id}/cancel", LaunchStatus.PENDING),
        ("/ui/launches/{id}/retry", LaunchStatus.FAILED),
        ("/ui/launches/bulk/retry", LaunchStatus.FAILED),
        ("/ui/launches/bulk/cancel", LaunchStatus.PENDING),
    ],
)
def test_a_viewer_cannot_act(
    viewer: FlaskClient, add_launch: Callable[..., int], path: str, status: LaunchStatus
) -> None:
    launch = add_launch(status)
    token = csrf_token(viewer, "/ui/")
    answer = viewer.post(path.format(id=launch), data={"csrf_token": token, "up_to": "99"})
    assert answer.status_code == 403
    assert "read-only" in answer.get_data(as_text=True)
    page = viewer.get(f"/ui/launches/{launch}").get_data(as_text=True)
    assert f"st-{status.value}" in page
    assert "<button" not in page.replace('<button type="submit">Log out</button>', "")


def test_a_viewer_gets_no_bulk_preview(viewer: FlaskClient) -> None:
    assert viewer.get("/ui/launches/bulk/retry").status_code == 403
