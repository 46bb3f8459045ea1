"""The amoCRM client against the fake amoCRM, over real HTTP on loopback.

Every outcome the dispatcher acts on is produced here by a real socket doing the real
thing (a refused port, a full accept queue, an answer that never comes, a connection
closed mid-call), never by a mocked `requests`.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import urlsplit

import pytest
import requests
from urllib3.exceptions import (
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError

from automation.amocrm.answers import Outcome, SalesbotTask, TokenSet, bad_indexes, classify_answer
from automation.amocrm.client import MAX_TASKS_PER_CALL, AmoCRMClient
from automation.amocrm.transport import classify_exception
from automation.errors import AmoAuthError, AutomationError
from tests.fake_amocrm import (
    ACCESS_TOKEN,
    AUTH_CODE,
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    REFRESH_TOKEN,
    FakeAmoCRM,
)

TASKS = [SalesbotTask(7, 1001, 2), SalesbotTask(8, 1002, 1), SalesbotTask(7, 1003, 2)]
LAUNCHED = [(7, 1001, 2), (8, 1002, 1), (7, 1003, 2)]


class TokenBox:
    """A token provider whose token the test can swap, like one read from the database."""

    def __init__(self, token: str = ACCESS_TOKEN) -> None:
        self.token = token
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.token


@pytest.fixture
def tokens() -> TokenBox:
    return TokenBox()


@pytest.fixture
def client(fake: FakeAmoCRM, tokens: TokenBox) -> Iterator[AmoCRMClient]:
    with AmoCRMClient(fake.url, tokens, connect_timeout=1.0, read_timeout=0.3) as amo:
        yield amo


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port that is bound but not listening: connecting gets an RST."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that completes the handshake (in the kernel) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def blackhole_url() -> Iterator[str]:
    """A port whose accept queue is full: the kernel drops new SYNs, connect times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    for sock in [*fillers, listener]:
        sock.close()


# --- answers ---------------------------------------------------------------------


def test_accepted_batch_is_launched(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    result = client.run_salesbots(TASKS)

    assert (result.outcome, result.status_code, result.error) == (Outcome.ACCEPTED, 202, None)
    assert '"success": true' in result.body_excerpt
    assert result.bad_indexes == ()
    assert not result.retryable
    assert fake.launches() == LAUNCHED


def test_result_times_are_aware_utc_and_consistent(client: AmoCRMClient) -> None:
    before = datetime.now(UTC)

    result = client.run_salesbots(TASKS)

    assert before <= result.started_at <= result.finished_at <= datetime.now(UTC)
    assert result.started_at.tzinfo is UTC
    elapsed = (result.finished_at - result.started_at) / timedelta(milliseconds=1)
    assert result.duration_ms == pytest.approx(elapsed, abs=0.01)


def test_empty_202_is_accepted(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.accept_empty_body(True)

    result = client.run_salesbots(TASKS)

    assert (result.outcome, result.body_excerpt) == (Outcome.ACCEPTED, "")
    assert fake.launches() == LAUNCHED


def test_success_false_is_refused(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.refuse_next(1)

    result = client.run_salesbots(TASKS)

    assert (result.outcome, result.status_code) == (Outcome.REFUSED, 202)
    assert '"success": false' in result.body_excerpt
    assert not result.retryable


def test_rejected_bots_come_back_as_bad_indexes(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.reject_bots({7})

    result = client.run_salesbots(TASKS)

    assert (result.outcome, result.status_code) == (Outcome.BAD_REQUEST, 400)
    assert result.bad_indexes == (0, 2)
    assert "validation-errors" in result.body_excerpt
    assert result.error == "HTTP 400: Bad Request: Request validation failed"
    assert fake.launches() == []


def test_invalid_task_is_sent_and_blamed_by_amocrm(client: AmoCRMClient) -> None:
    result = client.run_salesbots([*TASKS, SalesbotTask(9, 1004, 99)])

    assert (result.outcome, result.bad_indexes) == (Outcome.BAD_REQUEST, (3,))


def test_rate_limit_with_html_body(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.limit_rps(1)

    first, second = client.run_salesbots(TASKS), client.run_salesbots(TASKS)

    assert first.outcome is Outcome.ACCEPTED
    assert (second.outcome, second.status_code) == (Outcome.RATE_LIMITED, 429)
    assert second.body_excerpt.startswith("<html>")
    assert second.error == "HTTP 429: Too Many Requests"
    assert second.retryable


def test_expired_token_is_unauthorized(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.expire_token()

    result = client.run_salesbots(TASKS)

    assert (result.outcome, result.status_code) == (Outcome.UNAUTHORIZED, 401)
    assert result.error == "HTTP 401: Unauthorized: Invalid user name or password"
    assert not result.retryable


def test_blocked_account_is_forbidden(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.limit_rps(1)
    fake.block_after(1)

    outcomes = [client.run_salesbots(TASKS).outcome for _ in range(3)]

    assert outcomes == [Outcome.ACCEPTED, Outcome.RATE_LIMITED, Outcome.FORBIDDEN]
    assert not client.run_salesbots(TASKS).retryable


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (500, Outcome.SERVER_ERROR),
        (502, Outcome.SERVER_ERROR),
        (504, Outcome.SERVER_ERROR),
        (422, Outcome.BAD_REQUEST),
        (404, Outcome.OTHER),
        (418, Outcome.OTHER),
        (302, Outcome.OTHER),  # never followed: a redirected POST would lose its body
    ],
)
def test_status_classification(
    client: AmoCRMClient, fake: FakeAmoCRM, status: int, outcome: Outcome
) -> None:
    fake.fail_next(1, status=status)

    result = client.run_salesbots(TASKS)

    assert (result.outcome, result.status_code) == (outcome, status)
    assert result.retryable is (outcome is not Outcome.BAD_REQUEST)
    assert len(fake.calls) == 1


def _in_a_minute() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [("30", 30, 30), ("0.5", 0.5, 0.5), ("-5", 0, 0), (None, None, None), ("soon", None, None)],
)
def test_a_429_carries_its_retry_after(
    client: AmoCRMClient,
    fake: FakeAmoCRM,
    header: str | None,
    low: float | None,
    high: float | None,
) -> None:
    fake.fail_next(1, status=429, retry_after=header)

    result = client.run_salesbots(TASKS)

    assert result.outcome is Outcome.RATE_LIMITED
    if low is None:
        assert result.retry_after is None
    else:
        assert result.retry_after is not None and low <= result.retry_after <= (high or low)


def test_a_retry_after_may_be_an_http_date(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.fail_next(1, status=429, retry_after=_in_a_minute())

    result = client.run_salesbots(TASKS)

    assert result.retry_after is not None and 55 <= result.retry_after <= 60


# --- transport failures ----------------------------------------------------------


def test_refused_connection_is_not_sent(refused_url: str, tokens: TokenBox) -> None:
    with AmoCRMClient(refused_url, tokens) as amo:
        result = amo.run_salesbots(TASKS)

    assert (result.outcome, result.status_code) == (Outcome.NOT_SENT, None)
    assert result.error is not None
    assert result.error.startswith("ConnectionError:")
    assert result.retryable


def test_connect_timeout_is_not_sent(blackhole_url: str, tokens: TokenBox) -> None:
    with AmoCRMClient(blackhole_url, tokens, connect_timeout=0.2) as amo:
        result = amo.run_salesbots(TASKS)

    assert result.outcome is Outcome.NOT_SENT
    assert result.error is not None
    assert result.error.startswith("ConnectTimeout:")


def test_read_timeout_is_uncertain(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.stall_next(1, seconds=5)

    result = client.run_salesbots(TASKS)

    assert (result.outcome, result.status_code) == (Outcome.UNCERTAIN, None)
    assert result.error is not None
    assert result.error.startswith("ReadTimeout:")
    assert not result.retryable
    assert fake.launches() == LAUNCHED  # amoCRM did get it: resending would launch twice


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_connection_lost_after_sending_is_uncertain(
    client: AmoCRMClient, fake: FakeAmoCRM, reset: bool
) -> None:
    fake.drop_next(1, after_processing=True, reset=reset)

    result = client.run_salesbots(TASKS)

    assert result.outcome is Outcome.UNCERTAIN
    assert result.error is not None
    expected = "ConnectionResetError" if reset else "RemoteDisconnected"
    assert expected in result.error
    assert fake.launches() == LAUNCHED


def test_answer_cut_short_is_uncertain(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.truncate_next(1)

    result = client.run_salesbots(TASKS)

    assert result.outcome is Outcome.UNCERTAIN
    assert result.error is not None
    assert result.error.startswith("ChunkedEncodingError:")


def test_client_recovers_on_a_new_connection_after_a_drop(
    client: AmoCRMClient, fake: FakeAmoCRM
) -> None:
    fake.drop_next(1)

    outcomes = [client.run_salesbots(TASKS).outcome for _ in range(2)]

    assert outcomes == [Outcome.UNCERTAIN, Outcome.ACCEPTED]
    assert len(fake.calls) == 2  # no automatic resend of the dropped call


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (requests.ConnectTimeout("connect timed out"), Outcome.NOT_SENT),
        (
            requests.ConnectionError(
                MaxRetryError(None, "/x", NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
            ),
            Outcome.NOT_SENT,
        ),
        (
            requests.ConnectionError(
                MaxRetryError(
                    None,  # type: ignore[arg-type]
                    "/x",
                    NameResolutionError("x.invalid", None, socket.gaierror(-2, "unknown")),  # type: ignore[arg-type]
                )
            ),
            Outcome.NOT_SENT,
        ),
        (
            requests.exceptions.SSLError(
                MaxRetryError(
                    None,  # type: ignore[arg-type]
                    "/x",
                    Urllib3SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed")),
                )
            ),
            Outcome.NOT_SENT,
        ),
        (requests.exceptions.InvalidHeader("bad header"), Outcome.NOT_SENT),
        (requests.ReadTimeout("read timed out"), Outcome.UNCERTAIN),
        (
            requests.ConnectionError(ReadTimeoutError(None, "/x", "timed out reading body")),  # type: ignore[arg-type]
            Outcome.UNCERTAIN,
        ),
        (
            requests.ConnectionError(
                ProtocolError("Connection aborted.", ConnectionResetError(104))
            ),
            Outcome.UNCERTAIN,
        ),
        (requests.exceptions.ChunkedEncodingError(ProtocolError("ended")), Outcome.UNCERTAIN),
        (
            requests.exceptions.SSLError(
                MaxRetryError(None, "/x", Urllib3SSLError("bad record mac"))  # type: ignore[arg-type]
            ),
            Outcome.UNCERTAIN,
        ),
        (requests.RequestException("something new"), Outcome.UNCERTAIN),  # when in doubt
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_exception_classification(exc: Exception, outcome: Outcome) -> None:
    assert classify_exception(exc) is outcome


# --- classification of bodies (pure) ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (202, b"", Outcome.ACCEPTED),
        (202, b"  \n", Outcome.ACCEPTED),
        (202, b"{}", Outcome.ACCEPTED),
        (200, b'{"success": true}', Outcome.ACCEPTED),
        (204, b"", Outcome.ACCEPTED),
        (202, b'{"success": false}', Outcome.REFUSED),
        (202, b'{"success": "false"}', Outcome.REFUSED),
        (202, b"<html>ok</html>", Outcome.UNCERTAIN),
        (202, b"[]", Outcome.UNCERTAIN),
        (101, b"", Outcome.OTHER),
        (503, b"<html>", Outcome.SERVER_ERROR),
        (400, b"<html>", Outcome.BAD_REQUEST),
    ],
)
def test_answer_classification(status: int, body: bytes, outcome: Outcome) -> None:
    assert classify_answer(status, body, task_count=3)[0] is outcome


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"validation-errors": [{"request_id": "2"}, {"request_id": "0"}]}, (0, 2)),
        ({"validation-errors": [{"request_id": 1}, {"request_id": "1"}]}, (1,)),
        ({"validation-errors": [{"request_id": "5"}, {"request_id": "-1"}]}, ()),  # not in batch
        ({"validation-errors": [{"request_id": "x"}, {"request_id": True}, {}]}, ()),
        ({"validation-errors": [{"errors": []}]}, ()),  # the batch as a whole
        ({"validation-errors": "nonsense"}, ()),
        ({"title": "Bad Request"}, ()),
        (None, ()),
        ([1, 2], ()),
    ],
)
def test_bad_indexes_parsing(document: object, expected: tuple[int, ...]) -> None:
    assert bad_indexes(document, task_count=3) == expected


def test_batch_size_is_checked_before_sending(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    with pytest.raises(ValueError, match="at most 100 tasks, got 250"):
        client.run_salesbots([SalesbotTask(1, i + 1, 2) for i in range(250)])
    with pytest.raises(ValueError, match="at least one task"):
        client.run_salesbots([])

    full = client.run_salesbots([SalesbotTask(1, i + 1, 2) for i in range(MAX_TASKS_PER_CALL)])

    assert full.outcome is Outcome.ACCEPTED
    assert len(fake.calls) == 1


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="base_url"):
        AmoCRMClient("mybrand.amocrm.ru", TokenBox())


def test_body_excerpt_is_capped(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    fake.reject_bots({7})

    result = client.run_salesbots([SalesbotTask(7, i + 1, 2) for i in range(100)])

    assert len(result.body_excerpt) == 2000
    assert result.bad_indexes == tuple(range(100))


# --- tokens ----------------------------------------------------------------------


def test_every_call_presents_the_current_token(
    client: AmoCRMClient, fake: FakeAmoCRM, tokens: TokenBox
) -> None:
    client.run_salesbots(TASKS)
    tokens.token = "rotated-token"
    client.run_salesbots(TASKS)

    assert [(c.token_presented, c.token) for c in fake.calls] == [
        (True, ACCESS_TOKEN),
        (True, "rotated-token"),
    ]
    assert [c.status for c in fake.calls] == [202, 401]
    assert tokens.calls == 2


def test_exchange_code_returns_tokens_amocrm_accepts(
    client: AmoCRMClient, fake: FakeAmoCRM, tokens: TokenBox
) -> None:
    before = datetime.now(UTC)

    pair = client.exchange_code(CLIENT_ID, CLIENT_SECRET, AUTH_CODE, REDIRECT_URI)

    assert pair.access_token == fake.access_token
    assert pair.refresh_token == fake.refresh_token
    assert before + timedelta(seconds=86400) <= pair.expires_at
    assert pair.expires_at <= datetime.now(UTC) + timedelta(seconds=86400)
    assert pair.access_token not in repr(pair)
    assert "Authorization" not in fake.calls[0].headers
    tokens.token = pair.access_token
    assert client.run_salesbots(TASKS).outcome is Outcome.ACCEPTED


@pytest.mark.parametrize("expires_in", [float("inf"), float("nan"), -60, 0, 1e300])
def test_a_token_answer_with_an_impossible_lifetime_is_an_auth_error(
    expires_in: float, tokens: TokenBox
) -> None:
    with (
        FakeAmoCRM(expires_in=expires_in) as fake,  # type: ignore[arg-type]
        AmoCRMClient(fake.url, tokens) as client,
        pytest.raises(AmoAuthError) as caught,
    ):
        client.exchange_code(CLIENT_ID, CLIENT_SECRET, AUTH_CODE, REDIRECT_URI)

    assert "expires_in=" in str(caught.value)


def test_used_code_is_refused_with_amocrm_hint(client: AmoCRMClient) -> None:
    client.exchange_code(CLIENT_ID, CLIENT_SECRET, AUTH_CODE, REDIRECT_URI)

    with pytest.raises(AmoAuthError) as caught:
        client.exchange_code(CLIENT_ID, CLIENT_SECRET, AUTH_CODE, REDIRECT_URI)

    assert caught.value.status_code == 400
    assert "Authorization code has expired or was already used" in str(caught.value)
    assert isinstance(caught.value, AutomationError)


def test_refresh_token_is_single_use(client: AmoCRMClient) -> None:
    first = client.refresh_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, REDIRECT_URI)
    second = client.refresh_tokens(CLIENT_ID, CLIENT_SECRET, first.refresh_token, REDIRECT_URI)

    with pytest.raises(AmoAuthError, match="Token has been revoked") as caught:
        client.refresh_tokens(CLIENT_ID, CLIENT_SECRET, first.refresh_token, REDIRECT_URI)

    assert isinstance(second, TokenSet)
    assert len({REFRESH_TOKEN, first.refresh_token, second.refresh_token}) == 3
    assert first.refresh_token not in str(caught.value)


def test_refresh_restores_access_after_expiry(
    client: AmoCRMClient, fake: FakeAmoCRM, tokens: TokenBox
) -> None:
    fake.expire_token()
    assert client.run_salesbots(TASKS).outcome is Outcome.UNAUTHORIZED

    tokens.token = client.refresh_tokens(
        CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, REDIRECT_URI
    ).access_token

    assert client.run_salesbots(TASKS).outcome is Outcome.ACCEPTED
    assert fake.launches() == LAUNCHED


def test_wrong_client_secret_error_names_amocrm_problem_not_the_secret(
    client: AmoCRMClient,
) -> None:
    with pytest.raises(AmoAuthError) as caught:
        client.exchange_code(CLIENT_ID, "my-real-secret", AUTH_CODE, REDIRECT_URI)

    message = str(caught.value)
    assert caught.value.status_code == 401
    assert "Client authentication failed" in message
    assert "my-real-secret" not in message
    assert AUTH_CODE not in message


def test_unreachable_token_endpoint_raises_amo_auth_error(
    refused_url: str, tokens: TokenBox
) -> None:
    with (
        AmoCRMClient(refused_url, tokens) as amo,
        pytest.raises(AmoAuthError, match="did not get an answer") as caught,
    ):
        amo.refresh_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, REDIRECT_URI)

    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert "authorize again" not in str(caught.value)  # certainly not sent: token unspent


def test_lost_refresh_answer_warns_the_token_may_be_spent(
    silent_url: str, tokens: TokenBox
) -> None:
    with (
        AmoCRMClient(silent_url, tokens, read_timeout=0.3) as amo,
        pytest.raises(AmoAuthError, match="authorize again") as caught,
    ):
        amo.refresh_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, REDIRECT_URI)

    assert "ReadTimeout" in str(caught.value)
    assert REFRESH_TOKEN not in str(caught.value)


# --- logging and pooling ---------------------------------------------------------


def test_one_log_line_per_call_with_its_facts(
    client: AmoCRMClient, fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="automation.amocrm")
    fake.fail_next(1, status=503)

    client.run_salesbots(TASKS)
    client.run_salesbots(TASKS)

    records = [r for r in caplog.records if r.name == "automation.amocrm"]
    assert [r.getMessage().split(" duration_ms=")[0] for r in records] == [
        "POST /api/v2/salesbot/run tasks=3 status=503 outcome=server_error",
        "POST /api/v2/salesbot/run tasks=3 status=202 outcome=accepted",
    ]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert records[1].__dict__["outcome"] == "accepted"


def test_no_token_or_secret_reaches_the_logs(
    fake: FakeAmoCRM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3's debug lines too
    secret_token = "super-secret-access-token"
    box = TokenBox(secret_token)
    with AmoCRMClient(fake.url, box, read_timeout=0.3) as amo:
        amo.run_salesbots(TASKS)  # 401
        fake.stall_next(1, seconds=5)
        amo.run_salesbots(TASKS)  # read timeout
        box.token = secret_token + "\n"  # requests refuses the header, quoting its value
        leaked = amo.run_salesbots(TASKS)
        pair = amo.refresh_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, REDIRECT_URI)
        with pytest.raises(AmoAuthError):
            amo.refresh_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, REDIRECT_URI)

    assert leaked.outcome is Outcome.NOT_SENT
    assert leaked.error is not None
    assert secret_token not in leaked.error
    assert len(caplog.records) >= 5
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        for secret in (secret_token, CLIENT_SECRET, REFRESH_TOKEN, pair.access_token):
            assert secret not in text, record.getMessage()


def test_calls_reuse_one_kept_alive_connection(client: AmoCRMClient, fake: FakeAmoCRM) -> None:
    for _ in range(20):
        client.run_salesbots(TASKS)

    assert len({call.client_port for call in fake.calls}) == 1


def test_threads_share_the_pool(fake: FakeAmoCRM, tokens: TokenBox) -> None:
    outcomes: list[Outcome] = []
    with AmoCRMClient(fake.url, tokens, pool_size=4) as amo:

        def send() -> None:
            outcomes.extend(amo.run_salesbots(TASKS).outcome for _ in range(25))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert outcomes == [Outcome.ACCEPTED] * 100
    assert len(fake.launches()) == 300
    assert len({call.client_port for call in fake.calls}) <= 4


# --- the environment: proxies ------------------------------------------------------


class _Proxy(http.server.ThreadingHTTPServer):
    seen: list[str]


class _ForwardingHandler(http.server.BaseHTTPRequestHandler):
    """A plain HTTP proxy: records the absolute URL asked for, forwards the POST."""

    server: _Proxy

    def do_POST(self) -> None:
        self.server.seen.append(self.path)
        target = urlsplit(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        hop = {"connection", "proxy-connection", "keep-alive"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
        upstream = http.client.HTTPConnection(target.netloc, timeout=5)
        try:
            upstream.request("POST", target.path, body, headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in {"connection", "transfer-encoding", "content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Proxy]:
    """A forwarding proxy on loopback; the environment names no other proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    server = _Proxy(("127.0.0.1", 0), _ForwardingHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_proxy_named_in_the_environment_carries_the_calls(
    fake: FakeAmoCRM, tokens: TokenBox, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    with AmoCRMClient(fake.url, tokens) as amo:
        monkeypatch.delenv("http_proxy")  # read once, when the client is built
        results = [amo.run_salesbots(TASKS) for _ in range(2)]

    assert [result.outcome for result in results] == [Outcome.ACCEPTED] * 2
    assert proxy.seen == [f"{fake.url}/api/v2/salesbot/run"] * 2
    assert fake.launches() == LAUNCHED * 2


def test_no_proxy_naming_the_host_bypasses_the_proxy(
    fake: FakeAmoCRM, tokens: TokenBox, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("no_proxy", "example.org,127.0.0.1")
    with AmoCRMClient(fake.url, tokens) as amo:
        result = amo.run_salesbots(TASKS)

    assert result.outcome is Outcome.ACCEPTED
    assert proxy.seen == []
    assert fake.launches() == LAUNCHED
