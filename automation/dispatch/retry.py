"""The retry policy, pure: how long a launch waits after a retryable failure, and when
it gives up (AMOCRM_MAX_ATTEMPTS).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace

from tenacity import wait_exponential, wait_random_exponential

#: Retry schedule, "equal jitter": attempt n waits between 2^(n-1) and 2^n seconds (half
#: fixed, half random), at most 15 min. Full jitter could retry a failed call within
#: milliseconds; the fixed half keeps a struggling amoCRM from being hit again at once,
#: and the random half spreads the launches of a failed batch apart.
RETRY_WAIT = wait_exponential(multiplier=1, max=450) + wait_random_exponential(
    multiplier=1, max=450
)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do with a launch after a retryable failure."""

    give_up: bool
    not_before: datetime | None


def retry_decision(retries: int, max_attempts: int, now: datetime) -> RetryDecision:
    """Pure: retry with back-off until `max_attempts` attempts were made, then give up.

    `retries` counts earlier retryable failures of this launch; the current failure is
    attempt `retries + 1`.
    """
    attempt = retries + 1
    if attempt >= max_attempts:
        return RetryDecision(give_up=True, not_before=None)
    delay = RETRY_WAIT(SimpleNamespace(attempt_number=attempt))  # type: ignore[arg-type]
    return RetryDecision(give_up=False, not_before=now + timedelta(seconds=delay))
