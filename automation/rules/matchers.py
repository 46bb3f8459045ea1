"""Tests of one value, and the ways `when:` combines tests.

A test returns None when its subject passes and, when it does not, a `Mismatch` (a
value test) or a `Failure` (a condition on the event): what was expected and what was
there, as data for `deliveries show` and in words for `rules test`. Values compare as
a sales-ops person means it: `15000` equals `"15000"`, and a list (a multi-value
custom field) matches when an item does.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from automation.events.payloads import Event
from automation.rules.yamlfile import MISSING, show

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Mismatch:
    """What a value test found: what it expected, the value (None: missing), in words."""

    expected: str
    got: str | None
    says: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A condition an event failed: the field, what the rule expects, what it had."""

    field: str
    expected: str
    #: The event's value as shown (`142`, `'site'`); None when the field is missing.
    got: str | None
    says: str

    def __str__(self) -> str:
        return f"{self.field}: {self.says}"


ValueTest = Callable[[Any], Mismatch | None]
EventTest = Callable[[Event], Failure | None]

COMPARISONS: Mapping[str, tuple[str, Callable[[float, float], bool]]] = {
    "gt": (">", operator.gt),
    "gte": (">=", operator.ge),
    "lt": ("<", operator.lt),
    "lte": ("<=", operator.le),
}


def all_of(tests: Sequence[Callable[[T], R | None]]) -> Callable[[T], R | None]:
    """AND: the first failing test's reason, or None."""
    if len(tests) == 1:
        return tests[0]

    def check(subject: T) -> R | None:
        for test in tests:
            reason = test(subject)
            if reason is not None:
                return reason
        return None

    return check


def any_of(tests: Sequence[EventTest]) -> EventTest:
    """OR: None when any branch passes, else every branch's reason."""

    def check(event: Event) -> Failure | None:
        reasons = []
        for test in tests:
            reason = test(event)
            if reason is None:
                return None
            reasons.append(str(reason))
        got = "; ".join(reasons)
        return Failure("any", "one branch to match", got, f"no branch matched ({got})")

    return check


def _same(expected: Any, actual: Any) -> bool:
    """Equality as a sales-ops person means it: `15000` equals `"15000"`.

    A list (a multi-value custom field) equals a value it contains; only one level
    deep, so a payload nested without end cannot exhaust the stack.
    """
    if isinstance(actual, list):
        return any(_same_value(expected, item) for item in actual)
    return _same_value(expected, actual)


def _same_value(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, str):
        return _number(actual) == expected
    if isinstance(expected, str) and isinstance(actual, int | float):
        try:
            return expected == str(actual)
        except ValueError:  # an integer too long to print (Python's 4300-digit limit)
            return False
    return bool(expected == actual)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _numbers(value: Any) -> list[float]:
    items = value if isinstance(value, list) else [value]
    return [number for item in items if (number := _number(item)) is not None]


def _present(value: Any) -> bool:
    return value is not MISSING and value not in (None, "", [])


def equals(expected: Any) -> ValueTest:
    def test(value: Any) -> Mismatch | None:
        if value is MISSING:
            return Mismatch(repr(expected), None, "missing")
        if _same(expected, value):
            return None
        return Mismatch(repr(expected), show(value), f"{show(value)} is not {expected!r}")

    return test


def one_of(options: tuple[Any, ...]) -> ValueTest:
    def test(value: Any) -> Mismatch | None:
        expected = f"one of {list(options)!r}"
        if value is MISSING:
            return Mismatch(expected, None, "missing")
        if any(_same(option, value) for option in options):
            return None
        return Mismatch(expected, show(value), f"{show(value)} is not in {list(options)!r}")

    return test


def negated(inner: ValueTest, spec: Any) -> ValueTest:
    def test(value: Any) -> Mismatch | None:
        if inner(value) is not None:
            return None
        got = None if value is MISSING else show(value)
        return Mismatch(f"not {spec!r}", got, f"{show(value)} matches not: {spec!r}")

    return test


def exists(wanted: bool) -> ValueTest:
    def test(value: Any) -> Mismatch | None:
        if _present(value) == wanted:
            return None
        if wanted:
            return Mismatch("present", None if value is MISSING else show(value), "missing")
        return Mismatch("absent", show(value), f"{show(value)} is present")

    return test


def compare(name: str, bound: int | float) -> ValueTest:
    sign, compare = COMPARISONS[name]

    def test(value: Any) -> Mismatch | None:
        expected = f"{sign} {bound!r}"
        if value is MISSING:
            return Mismatch(expected, None, "missing")
        numbers = _numbers(value)
        if not numbers:
            return Mismatch(expected, show(value), f"{show(value)} is not a number")
        if any(compare(number, bound) for number in numbers):
            return None
        return Mismatch(expected, show(value), f"{show(value)} is not {sign} {bound!r}")

    return test


def on_field(getter: Callable[[Event], Any], label: str, test: ValueTest) -> EventTest:
    def check(event: Event) -> Failure | None:
        found = test(getter(event))
        return None if found is None else Failure(label, found.expected, found.got, found.says)

    return check
