"""What amoCRM's token and webhooks endpoints answered, as our types and errors.

Every message is built with the call's secrets masked: amoCRM's error details may quote
what we sent (a refresh token, a destination holding the webhook secret).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import requests

from automation.amocrm.answers import (
    ERROR_CHARS,
    CallResult,
    Outcome,
    TokenSet,
    body_excerpt,
    http_error_text,
    json_or_none,
    scrub,
)
from automation.errors import AmoAuthError, WebhooksApiError

#: The longest token lifetime we accept, in seconds (about 30 years).
MAX_TOKEN_LIFETIME = 1e9
WEBHOOKS_PATH = "/api/v4/webhooks"


def unreachable_error(grant: str, result: CallResult) -> AmoAuthError:
    message = f"token request ({grant}) did not get an answer: {result.error}"
    if result.outcome is Outcome.UNCERTAIN and grant == "refresh_token":
        message += (
            "; the request may have reached amoCRM and spent the refresh token: if the"
            " next refresh is refused, authorize again with `automation auth exchange CODE`"
        )
    return AmoAuthError(message)


def refused_error(grant: str, response: requests.Response, secrets: Sequence[str]) -> AmoAuthError:
    """An error naming amoCRM's title, detail and hint, with every secret masked."""
    document = json_or_none(response.content)
    problem = document if isinstance(document, dict) else {}
    title = scrub(str(problem.get("title") or response.reason or ""), secrets)
    detail = scrub(str(problem.get("detail") or ""), secrets)
    hint = scrub(str(problem.get("hint") or ""), secrets)
    message = f"amoCRM refused the token request ({grant}): HTTP {response.status_code}"
    message += "".join(f": {part}" for part in (title, detail) if part)
    message += f" (hint: {hint})" if hint else ""
    return AmoAuthError(
        message[:ERROR_CHARS], status_code=response.status_code, title=title, detail=detail
    )


def parse_tokens(response: requests.Response) -> TokenSet:
    document = json_or_none(response.content)
    answer = document if isinstance(document, dict) else {}
    access, refresh = answer.get("access_token"), answer.get("refresh_token")
    expires_in = answer.get("expires_in")
    if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
        raise AmoAuthError("amoCRM answered the token request without access_token/refresh_token")
    if not _is_token_lifetime(expires_in):
        raise AmoAuthError(f"amoCRM answered the token request with expires_in={expires_in!r}")
    # expires_in is relative: count it from our clock, not amoCRM's server_time.
    expires_at = datetime.now(UTC) + timedelta(seconds=float(expires_in))
    return TokenSet(access_token=access, refresh_token=refresh, expires_at=expires_at)


def _is_token_lifetime(value: Any) -> TypeGuard[int | float]:
    """A positive, finite number of seconds that a datetime can add (JSON allows
    `Infinity`, and `timedelta` overflows long before it)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and 0 < value < MAX_TOKEN_LIFETIME


#: What an operator can do about a refusal of the webhooks API.
_WEBHOOKS_HINTS = {
    401: "the access token is expired or revoked: set AMOCRM_ACCESS_TOKEN or run "
    "`automation auth exchange CODE`",
    403: "managing webhooks needs the token of an account administrator (or the account's "
    "API access is blocked)",
}


def webhooks_answer(method: str, response: requests.Response, secrets: Sequence[str]) -> Any:
    """The JSON of a 2xx answer (None when empty); a `WebhooksApiError` for the rest.

    amoCRM's error details may quote what we sent, and the destination holds the
    webhook secret: every secret of the call is masked, not only the token.
    """
    status = response.status_code
    document = json_or_none(response.content)
    if not 200 <= status < 300:
        text = scrub(http_error_text(status, document), secrets)
        hint = _WEBHOOKS_HINTS.get(status)
        message = f"amoCRM refused {method} {WEBHOOKS_PATH}: {text}" + (f"; {hint}" if hint else "")
        raise WebhooksApiError(message, status_code=status)
    if response.content.strip() and not isinstance(document, dict):
        excerpt = scrub(body_excerpt(response.content), secrets)[:200]
        raise WebhooksApiError(
            f"amoCRM answered {method} {WEBHOOKS_PATH} with HTTP {status} and a body that is "
            f"not a JSON object: {excerpt!r}",
            status_code=status,
        )
    return document


def embedded_webhooks(document: Any) -> list[dict[str, Any]]:
    """`_embedded.webhooks` of a list answer; nothing for an empty answer."""
    embedded = document.get("_embedded") if isinstance(document, dict) else None
    items = embedded.get("webhooks") if isinstance(embedded, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
