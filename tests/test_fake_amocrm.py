"""The fake amoCRM enforces what it claims, checked with plain `requests` over loopback.

Other tests trust the fake to say "amoCRM would have refused this" or "this reached
amoCRM"; these tests are why that trust is earned.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fake_amocrm import (
    ACCEPTED_BODY,
    ACCESS_TOKEN,
    AUTH_CODE,
    CLIENT_ID,
    CLIENT_SECRET,
    OAUTH_PATH,
    REDIRECT_URI,
    REFRESH_TOKEN,
    SALESBOT_PATH,
    UNAUTHORIZED_BODY,
    FakeAmoCRM,
    max_in_window,
)

TASK = {"bot_id": 7, "entity_id": 1001, "entity_type": 2}


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def run(
    http: requests.Session,
    fake: FakeAmoCRM,
    tasks: Any,
    token: str | None = ACCESS_TOKEN,
    timeout: float = 5.0,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return http.post(fake.url + SALESBOT_PATH, json=tasks, headers=headers, timeout=timeout)


def oauth(http: requests.Session, fake: FakeAmoCRM, **fields: str) -> requests.Response:
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT_URI}
    return http.post(fake.url + OAUTH_PATH, json={**body, **fields}, timeout=5)


# --- salesbot run ----------------------------------------------------------------


def test_valid_batch_is_accepted_with_amocrm_hal_body(fake: FakeAmoCRM, http: Any) -> None:
    response = run(http, fake, [TASK, {**TASK, "entity_id": 1002, "entity_type": 1}])

    assert response.status_code == 202
    assert response.headers["Content-Type"] == "application/hal+json"
    assert response.json() == ACCEPTED_BODY
    assert fake.launches() == [(7, 1001, 2), (7, 1002, 1)]


def test_empty_body_option_answers_202_without_body(fake: FakeAmoCRM, http: Any) -> None:
    fake.accept_empty_body(True)

    response = run(http, fake, [TASK])

    assert (response.status_code, response.content) == (202, b"")
    assert fake.launches() == [(7, 1001, 2)]


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_missing_or_wrong_token_gets_amocrm_401(
    fake: FakeAmoCRM, http: Any, token: str | None
) -> None:
    response = run(http, fake, [TASK], token=token)

    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED_BODY
    assert fake.launches() == []
    assert fake.calls[0].token_presented is (token is not None)


def test_recorded_headers_keep_no_authorization_value(fake: FakeAmoCRM, http: Any) -> None:
    run(http, fake, [TASK])

    call = fake.calls[0]
    assert (call.token_presented, call.token) == (True, ACCESS_TOKEN)
    assert all(name.lower() != "authorization" for name in call.headers)
    assert ACCESS_TOKEN not in repr(call.headers)
    assert (call.method, call.path, call.body, call.status) == ("POST", SALESBOT_PATH, [TASK], 202)


def test_more_than_100_tasks_are_rejected_as_a_whole(fake: FakeAmoCRM, http: Any) -> None:
    response = run(http, fake, [{**TASK, "entity_id": i + 1} for i in range(250)])

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"] == "Request validation failed"
    assert problem["validation-errors"][0]["errors"][0]["code"] == "TooMany"
    assert "request_id" not in problem["validation-errors"][0]
    assert fake.launches() == []


def test_exactly_100_tasks_are_accepted(fake: FakeAmoCRM, http: Any) -> None:
    response = run(http, fake, [{**TASK, "entity_id": i + 1} for i in range(100)])

    assert response.status_code == 202
    assert len(fake.launches()) == 100


@pytest.mark.parametrize(
    ("task", "path", "code"),
    [
        ({**TASK, "bot_id": 0}, "bot_id", "TooLow"),
        ({**TASK, "entity_id": -5}, "entity_id", "TooLow"),
        ({**TASK, "bot_id": "7"}, "bot_id", "InvalidType"),
        ({**TASK, "entity_id": True}, "entity_id", "InvalidType"),
        ({**TASK, "entity_type": 99}, "entity_type", "NotSupportedChoice"),
        ({**TASK, "entity_type": "leads"}, "entity_type", "NotSupportedChoice"),
        ({"entity_id": 1, "entity_type": 2}, "bot_id", "InvalidType"),
    ],
)
def test_invalid_task_is_blamed_by_index_as_string(
    fake: FakeAmoCRM, http: Any, task: dict[str, Any], path: str, code: str
) -> None:
    response = run(http, fake, [TASK, task])

    assert response.status_code == 400
    [blamed] = response.json()["validation-errors"]
    assert blamed["request_id"] == "1"
    assert {"path": path, "code": code} == {k: blamed["errors"][0][k] for k in ("path", "code")}
    assert fake.launches() == []


@pytest.mark.parametrize("body", [{"bot_id": 1}, [], "[", None])
def test_body_that_is_not_a_task_array_is_400(fake: FakeAmoCRM, http: Any, body: Any) -> None:
    raw = body if isinstance(body, str) else None
    response = http.post(
        fake.url + SALESBOT_PATH,
        data=raw,
        json=None if raw is not None else body,
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=5,
    )

    assert response.status_code == 400
    assert "validation-errors" in response.json()


def test_rejected_bots_are_named_by_index_with_path_bot_id(fake: FakeAmoCRM, http: Any) -> None:
    fake.reject_bots({13, 14})
    tasks = [TASK, {**TASK, "bot_id": 13}, TASK, {**TASK, "bot_id": 14}]

    response = run(http, fake, tasks)

    assert response.status_code == 400
    errors = response.json()["validation-errors"]
    assert [e["request_id"] for e in errors] == ["1", "3"]
    assert {e["errors"][0]["path"] for e in errors} == {"bot_id"}
    assert fake.launches() == []


def test_refuse_next_answers_success_false_n_times(fake: FakeAmoCRM, http: Any) -> None:
    fake.refuse_next(2)

    answers = [run(http, fake, [TASK]).json()["success"] for _ in range(3)]

    assert answers == [False, False, True]
    assert fake.launches() == [(7, 1001, 2)]


def test_fail_next_answers_the_status_n_times(fake: FakeAmoCRM, http: Any) -> None:
    fake.fail_next(2, status=503)

    statuses = [run(http, fake, [TASK]).status_code for _ in range(3)]

    assert statuses == [503, 503, 202]
    assert len(fake.launches()) == 1


def test_unknown_route_is_404(fake: FakeAmoCRM, http: Any) -> None:
    assert http.get(fake.url + "/api/v4/leads", timeout=5).status_code == 404


# --- rate limit and block --------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "seconds", "expected"),
    [
        ([], 1.0, 0),
        ([5.0], 1.0, 1),
        ([0.0, 0.5, 0.99, 1.0], 1.0, 3),  # the window is half-open: [t, t + 1)
        ([0.0, 1.0, 2.0, 3.0], 1.0, 1),
        ([3.0, 0.1, 0.2, 2.0, 0.3], 1.0, 3),  # order of arrival does not matter
        ([0.0, 0.9, 1.1, 1.2, 1.8, 2.5], 1.0, 4),
        ([0.0, 0.9, 1.1, 1.2, 1.8, 2.5], 2.0, 5),
    ],
)
def test_window_counts_most_arrivals_in_any_half_open_window(
    times: list[float], seconds: float, expected: int
) -> None:
    assert max_in_window(times, seconds) == expected


def test_rate_limit_answers_html_429_beyond_n_per_second(fake: FakeAmoCRM, http: Any) -> None:
    fake.limit_rps(5)

    responses = [run(http, fake, [TASK]) for _ in range(8)]

    assert [r.status_code for r in responses] == [202] * 5 + [429] * 3
    assert responses[-1].headers["Content-Type"] == "text/html"
    assert b"429 Too Many Requests" in responses[-1].content
    assert fake.max_requests_in_any_window(1.0) == 8
    assert fake.max_requests_in_any_window(1.0, include_429=False) == 5
    assert len(fake.launches()) == 5


def test_rate_limit_window_slides(fake: FakeAmoCRM, http: Any) -> None:
    fake.limit_rps(3)
    first = [run(http, fake, [TASK]).status_code for _ in range(3)]
    time.sleep(1.05)

    second = [run(http, fake, [TASK]).status_code for _ in range(4)]

    assert (first, second) == ([202] * 3, [202, 202, 202, 429])
    assert fake.max_requests_in_any_window(1.0, include_429=False) == 3


def test_concurrent_clients_never_get_more_than_the_limit(fake: FakeAmoCRM) -> None:
    fake.limit_rps(10)
    statuses: list[int] = []

    def hammer() -> None:
        with requests.Session() as session:
            statuses.extend(run(session, fake, [TASK]).status_code for _ in range(15))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(statuses) == 60
    assert fake.max_requests_in_any_window(1.0, include_429=False) <= 10
    assert statuses.count(202) == len(fake.launches()) >= 10


def test_repeated_429s_block_everything_until_unblock(fake: FakeAmoCRM, http: Any) -> None:
    fake.limit_rps(1)
    fake.block_after(2)

    statuses = [run(http, fake, [TASK]).status_code for _ in range(4)]
    oauth_status = oauth(http, fake, grant_type="refresh_token", refresh_token=REFRESH_TOKEN)

    assert statuses == [202, 429, 429, 403]
    assert oauth_status.status_code == 403
    fake.unblock()
    fake.limit_rps(None)
    assert run(http, fake, [TASK]).status_code == 202


# --- transport knobs -------------------------------------------------------------


def test_stalled_call_is_processed_and_recorded_before_the_answer(
    fake: FakeAmoCRM, http: Any
) -> None:
    fake.stall_next(1, seconds=5)

    with pytest.raises(requests.ReadTimeout):
        run(http, fake, [TASK], timeout=0.3)

    [call] = fake.calls
    assert (call.stalled, call.status, call.accepted) == (True, 202, True)
    assert fake.launches() == [(7, 1001, 2)]
    assert run(http, fake, [TASK]).status_code == 202  # only the next call stalls


def test_dropped_call_is_closed_unanswered_and_not_processed(fake: FakeAmoCRM, http: Any) -> None:
    fake.drop_next(1)

    with pytest.raises(requests.ConnectionError):
        run(http, fake, [TASK])

    [call] = fake.calls
    assert (call.dropped, call.status, call.accepted) == (True, None, False)
    assert fake.launches() == []


def test_drop_after_processing_launches_then_resets(fake: FakeAmoCRM, http: Any) -> None:
    fake.drop_next(1, after_processing=True, reset=True)

    with pytest.raises(requests.ConnectionError, match="reset"):
        run(http, fake, [TASK])

    assert fake.launches() == [(7, 1001, 2)]
    assert fake.calls[0].dropped


def test_stop_is_prompt_with_stalled_calls_and_idle_connections(fake: FakeAmoCRM) -> None:
    idle = requests.Session()
    run(idle, fake, [TASK])  # leaves a kept-alive connection open on the server
    fake.stall_next(1, seconds=60)
    waiting = requests.Session()
    stalled = threading.Thread(target=run, args=(waiting, fake, [TASK]))
    stalled.start()
    time.sleep(0.1)

    started = time.monotonic()
    fake.stop()

    assert time.monotonic() - started < 1.0
    stalled.join(timeout=2)
    assert not stalled.is_alive()
    idle.close()
    waiting.close()


# --- OAuth -----------------------------------------------------------------------


def test_authorization_code_grants_tokens_once(fake: FakeAmoCRM, http: Any) -> None:
    first = oauth(http, fake, grant_type="authorization_code", code=AUTH_CODE)
    again = oauth(http, fake, grant_type="authorization_code", code=AUTH_CODE)

    assert first.status_code == 200
    tokens = first.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 86400
    assert isinstance(tokens["server_time"], int)
    assert tokens["access_token"] == fake.access_token
    assert again.status_code == 400
    assert run(http, fake, [TASK], token=tokens["access_token"]).status_code == 202


def test_refresh_token_is_single_use(fake: FakeAmoCRM, http: Any) -> None:
    first = oauth(http, fake, grant_type="refresh_token", refresh_token=REFRESH_TOKEN)
    reused = oauth(http, fake, grant_type="refresh_token", refresh_token=REFRESH_TOKEN)
    chained = oauth(
        http, fake, grant_type="refresh_token", refresh_token=first.json()["refresh_token"]
    )

    assert first.status_code == 200
    assert first.json()["refresh_token"] != REFRESH_TOKEN
    assert reused.status_code == 400
    assert reused.json()["hint"] == "Token has been revoked"
    assert chained.status_code == 200


def test_only_the_newest_access_token_is_valid(fake: FakeAmoCRM, http: Any) -> None:
    new = oauth(http, fake, grant_type="refresh_token", refresh_token=REFRESH_TOKEN).json()

    assert run(http, fake, [TASK], token=ACCESS_TOKEN).status_code == 401
    assert run(http, fake, [TASK], token=new["access_token"]).status_code == 202


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"client_secret": "nope", "grant_type": "authorization_code", "code": AUTH_CODE}, 401),
        ({"client_id": "other", "grant_type": "authorization_code", "code": AUTH_CODE}, 401),
        ({"redirect_uri": "https://evil.example", "grant_type": "refresh_token"}, 400),
        ({"grant_type": "authorization_code", "code": "guess"}, 400),
        ({"grant_type": "password"}, 400),
    ],
)
def test_oauth_refuses_bad_requests(
    fake: FakeAmoCRM, http: Any, fields: dict[str, str], status: int
) -> None:
    response = oauth(http, fake, **fields)

    assert response.status_code == status
    assert response.json()["hint"]
    assert fake.access_token == ACCESS_TOKEN  # nothing was issued


def test_expired_token_is_401_until_refreshed(fake: FakeAmoCRM, http: Any) -> None:
    fake.expire_token()
    assert run(http, fake, [TASK]).status_code == 401

    new = oauth(http, fake, grant_type="refresh_token", refresh_token=REFRESH_TOKEN).json()

    assert run(http, fake, [TASK], token=new["access_token"]).status_code == 202


# --- speed -----------------------------------------------------------------------


def test_serves_hundreds_of_requests_over_one_kept_alive_connection(
    fake: FakeAmoCRM, http: Any
) -> None:
    """The drain benchmark sends thousands of calls through one session: the fake
    must answer each on the same connection. (How fast is the benchmark's business:
    this machine is shared, and a rate asserted here failed whenever it was busy.)"""
    run(http, fake, [TASK])  # open the connection

    for _ in range(300):
        run(http, fake, [TASK])

    assert len(fake.calls) == 301
    assert len({call.client_port for call in fake.calls}) == 1  # one kept-alive connection


def test_the_journal_has_one_line_per_salesbot_call_with_its_tasks(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    tasks = [{"bot_id": 7, "entity_id": 1, "entity_type": 2}]
    with FakeAmoCRM(journal=journal) as fake:
        fake.fail_next(1, status=400)
        for _ in range(2):
            requests.post(
                f"{fake.url}/api/v2/salesbot/run",
                json=tasks,
                headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
                timeout=5,
            )

    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(line["status"], line["accepted"], line["tasks"]) for line in lines] == [
        (400, False, tasks),
        (202, True, tasks),
    ]
    assert lines[0]["monotonic"] <= lines[1]["monotonic"]
