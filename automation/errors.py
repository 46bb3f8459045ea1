"""One exception hierarchy: every error the product raises on purpose.

The docstring of each class is its default message and says how to fix the problem;
callers add the specifics (which field, which file and line). Every class lives here,
so a reader finds what can go wrong in one place, and the CLI turns any
`AutomationError` into one clean line (`automation.cli`), never a traceback. The two
`ValueError`s at the end are not failures of the product but verdicts on one input
value, which pydantic and the read API turn into their own answers.
"""

from __future__ import annotations


class AutomationError(Exception):
    """Something went wrong in the automation server."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class ConfigError(AutomationError):
    """The environment is misconfigured; fix the variables named below."""


class PayloadError(AutomationError):
    """The request body is not an amoCRM webhook we can decode."""


class CommitterUnavailable(AutomationError):
    """The webhook was not stored: the server is stopping or overloaded; retry later."""


class RulesError(AutomationError):
    """The rules file is invalid; every problem is listed with file:line."""

    def __init__(self, problems: list[str], filename: str = "rules.yaml") -> None:
        self.problems = problems
        self.filename = filename
        count = len(problems)
        head = f"{filename}: {count} error{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *problems]))


class AmoAuthError(AutomationError):
    """amoCRM refused the OAuth token request; check the AMOCRM_CLIENT_* settings.

    The first line is the default message. When the refresh token is spent or revoked,
    authorize again with `automation auth exchange CODE`. Messages never carry secrets.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        status_code: int | None = None,
        title: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.title = title
        self.detail = detail
        super().__init__(message)


class NoDatabase(AutomationError):
    """no database at that path: run from the directory that holds it or set DATABASE_URL"""


class BadAge(AutomationError):
    """Expected an age such as '30d' (days) or '12h' (hours), greater than zero."""


class SchemaOutdated(AutomationError):
    """The database schema is older than the code: run `automation db upgrade`."""


class MissingDriver(AutomationError):
    """DATABASE_URL is PostgreSQL, which needs psycopg: pip install 'amocrm-automation[postgres]'"""


class NoToken(AutomationError):
    """No amoCRM token: set AMOCRM_ACCESS_TOKEN, or run `automation auth exchange CODE`."""


class NotAlone(AutomationError):
    """Another dispatcher runs on this SQLite database; only one may (use PostgreSQL for more)."""


class WebhooksApiError(AutomationError):
    """amoCRM's webhooks API refused the request or did not answer."""

    def __init__(self, message: str | None = None, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class WebhookUrlError(AutomationError):
    """The webhook URL must end in /webhooks/amocrm/<WEBHOOK_SECRET>/ or be a bare base URL."""


class UnfitId(PayloadError):
    """An entity id that cannot be stored; `path` is its field within the item."""

    def __init__(self, path: tuple[str, ...], problem: str) -> None:
        self.path = path
        self.problem = problem
        field = path[0] + "".join(f"[{part}]" for part in path[1:]) if path else ""
        super().__init__(f"field {field!r}: {problem}")


class Invalid(ValueError):
    """Not a value this setting accepts; `expected` says what it does, `hint` follows the value."""

    def __init__(self, expected: str, hint: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.hint = hint


class BadParameter(ValueError):
    """A query parameter we cannot use; the message names it and what it accepts."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")


class ClaimLost(AutomationError):
    """Launches this dispatcher claimed are no longer its to send: another dispatcher
    recovered them (this one stalled past DISPATCHER_DEAD_AFTER). Nothing was sent."""
