"""Tests of one value, and the ways `when:` combines tests.

A test returns None when its subject passes and the reason when it does not (which
`rules test` shows). Values compare as a sales-ops person means it: `15000` equals
`"15000"`, and a list (a multi-value custom field) matches when an item does.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from automation.events.payloads import Event
from automation.rules.yamlfile import MISSING, show

T = TypeVar("T")
Test = Callable[[T], str | None]
EventTest = Callable[[Event], str | None]
ValueTest = Callable[[Any], str | None]

COMPARISONS: Mapping[str, tuple[str, Callable[[float, float], bool]]] = {
    "gt": (">", operator.gt),
    "gte": (">=", operator.ge),
    "lt": ("<", operator.lt),
    "lte": ("<=", operator.le),
}


def all_of(tests: Sequence[Test[T]]) -> Test[T]:
    """AND: the first failing test's reason, or None."""
    if len(tests) == 1:
        return tests[0]

    def check(subject: T) -> str | None:
        for test in tests:
            reason = test(subject)
            if reason is not None:
                return reason
        return None

    return check


def any_of(tests: Sequence[EventTest]) -> EventTest:
    """OR: None when any branch passes, else every branch's reason."""

    def check(event: Event) -> str | None:
        reasons = []
        for test in tests:
            reason = test(event)
            if reason is None:
                return None
            reasons.append(reason)
        return f"any: no branch matched ({'; '.join(reasons)})"

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
    def test(value: Any) -> str | None:
        if value is MISSING:
            return "missing"
        return None if _same(expected, value) else f"{show(value)} is not {expected!r}"

    return test


def one_of(options: tuple[Any, ...]) -> ValueTest:
    def test(value: Any) -> str | None:
        if value is MISSING:
            return "missing"
        if any(_same(option, value) for option in options):
            return None
        return f"{show(value)} is not in {list(options)!r}"

    return test


def negated(inner: ValueTest, spec: Any) -> ValueTest:
    def test(value: Any) -> str | None:
        return f"{show(value)} matches not: {spec!r}" if inner(value) is None else None

    return test


def exists(wanted: bool) -> ValueTest:
    def test(value: Any) -> str | None:
        if _present(value) == wanted:
            return None
        return "missing" if wanted else f"{show(value)} is present"

    return test


def compare(name: str, bound: int | float) -> ValueTest:
    sign, compare = COMPARISONS[name]

    def test(value: Any) -> str | None:
        if value is MISSING:
            return "missing"
        numbers = _numbers(value)
        if not numbers:
            return f"{show(value)} is not a number"
        if any(compare(number, bound) for number in numbers):
            return None
        return f"{show(value)} is not {sign} {bound!r}"

    return test


def on_field(getter: Callable[[Event], Any], label: str, test: ValueTest) -> EventTest:
    def check(event: Event) -> str | None:
        reason = test(getter(event))
        return None if reason is None else f"{label}: {reason}"

    return check
