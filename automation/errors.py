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
