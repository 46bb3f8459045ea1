"""One exception hierarchy: every error the product raises on purpose.

The docstring of each class is its default message and says how to fix the problem;
callers add the specifics (which field, which file and line).
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
