"""`when:` conditions: compiled once into tests, evaluated per event.

`compile_condition` turns a rule's `when:` mapping (fields with a value, a list of
values or operators; `any:`, `tags:` and `custom_fields:`) into a `Condition`,
reporting every mistake as a `Problem`. A compiled test returns `None` when an
event passes and the reason when it does not, which `rules test` shows.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from automation.events.payloads import Event
from automation.rules.yamlfile import MISSING, Loc, Problem, did_you_mean, is_int, show

T = TypeVar("T")
Test = Callable[[T], str | None]
EventTest = Callable[[Event], str | None]
ValueTest = Callable[[Any], str | None]

OPERATORS = ("eq", "in", "not", "exists", "gt", "gte", "lt", "lte")
_COMPARISONS: Mapping[str, tuple[str, Callable[[float, float], bool]]] = {
    "gt": (">", operator.gt),
    "gte": (">=", operator.ge),
    "lt": ("<", operator.lt),
    "lte": ("<=", operator.le),
}
#: Fields whose values are amoCRM ids: a rule comparing them to text is a mistake.
_ID_FIELDS = frozenset(
    {
        *("pipeline_id", "old_pipeline_id", "status_id", "old_status_id"),
        *("responsible_user_id", "old_responsible_user_id"),
    }
)
_TAG_MODES = ("any", "all", "none")


@dataclass(frozen=True)
class Condition:
    """A compiled `when:`.

    `test(event)` is None when the event passes, else the reason it does not.
    `exact` maps top-level fields to the only values they accept, so `conflicts()`
    can see that `status_id: 1` and `status_id: 2` never fire together.
    `names_type` says whether `when` sets a message `type` (see loop safety).
    """

    test: EventTest
    exact: Mapping[str, frozenset[Hashable]] = field(default_factory=dict)
    names_type: bool = False


def compile_condition(
    raw: Mapping[Any, Any], loc: Loc, problems: list[Problem]
) -> Condition | None:
    """A rule's whole `when:` at `loc`, or None after adding its problems to `problems`."""
    return _WhenCompiler(problems).condition(raw, loc)


def _all_of(tests: Sequence[Test[T]]) -> Test[T]:
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


def _any_of(tests: Sequence[EventTest]) -> EventTest:
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


def _equals(expected: Any) -> ValueTest:
    def test(value: Any) -> str | None:
        if value is MISSING:
            return "missing"
        return None if _same(expected, value) else f"{show(value)} is not {expected!r}"

    return test


def _one_of(options: tuple[Any, ...]) -> ValueTest:
    def test(value: Any) -> str | None:
        if value is MISSING:
            return "missing"
        if any(_same(option, value) for option in options):
            return None
        return f"{show(value)} is not in {list(options)!r}"

    return test


def _negated(inner: ValueTest, spec: Any) -> ValueTest:
    def test(value: Any) -> str | None:
        return f"{show(value)} matches not: {spec!r}" if inner(value) is None else None

    return test


def _exists(wanted: bool) -> ValueTest:
    def test(value: Any) -> str | None:
        if _present(value) == wanted:
            return None
        return "missing" if wanted else f"{show(value)} is present"

    return test


def _compare(name: str, bound: int | float) -> ValueTest:
    sign, compare = _COMPARISONS[name]

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


def _on_field(getter: Callable[[Event], Any], label: str, test: ValueTest) -> EventTest:
    def check(event: Event) -> str | None:
        reason = test(getter(event))
        return None if reason is None else f"{label}: {reason}"

    return check


def _path_getter(path: tuple[str, ...]) -> Callable[[Event], Any]:
    """Read a dotted path from `event.data`; `message.type` reads `type` of a message."""

    def get(event: Event) -> Any:
        steps = path[1:] if path[0] == event.family and path[0] not in event.data else path
        value: Any = event.data
        for step in steps:
            if isinstance(value, Mapping):
                value = value.get(step, MISSING)
            elif isinstance(value, list) and _is_index(step) and int(step) < len(value):
                value = value[int(step)]
            else:
                return MISSING
        return value

    return get


def _is_index(step: str) -> bool:
    """A list index in a path: ASCII digits only (`"¹".isdigit()`, but `int("¹")` fails)."""
    return step.isascii() and step.isdigit() and len(step) <= 18


def _custom_field_getter(key: int | str) -> Callable[[Event], Any]:
    """Values of one custom field (legacy shape), found by id, name or code.

    A payload of another shape (`custom_fields: 5`, `values: 7`) has no such field
    rather than an error: a webhook must never fail because of what amoCRM sent.
    """

    def get(event: Event) -> Any:
        for item in _items(event.data.get("custom_fields")):
            if isinstance(item, Mapping) and _is_field(item, key):
                values = _items(item.get("values"))
                return [v.get("value") if isinstance(v, Mapping) else v for v in values]
        return MISSING

    return get


def _items(value: Any) -> list[Any]:
    """The items of a list; anything else has none."""
    return value if isinstance(value, list) else []


def _is_field(item: Mapping[str, Any], key: int | str) -> bool:
    if isinstance(key, int):
        return bool(item.get("id") == key)
    return key in (item.get("name"), item.get("code"))


def _tag_names(event: Event) -> set[str]:
    tags = event.data.get("tags")
    items = tags if isinstance(tags, list) else []
    return {str(tag["name"]) for tag in items if isinstance(tag, Mapping) and "name" in tag}


def _tags_test(mode: str, wanted: tuple[str, ...]) -> EventTest:
    def check(event: Event) -> str | None:
        names = _tag_names(event)
        found = [tag for tag in wanted if tag in names]
        have = sorted(names)
        if mode == "any" and not found:
            return f"tags: none of {list(wanted)!r} in {have!r}"
        if mode == "all" and len(found) < len(wanted):
            missing = [tag for tag in wanted if tag not in names]
            return f"tags: {missing!r} not in {have!r}"
        if mode == "none" and found:
            return f"tags: has {found!r}"
        return None

    return check


def _canonical(value: Any) -> Hashable:
    return int(value) if is_int(value) else value


class _WhenCompiler:
    """Compile `when:` mappings into tests, collecting every problem on the way."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems

    def fail(self, loc: Loc, message: str, mark_loc: Loc | None = None) -> None:
        self.problems.append(Problem(loc, message, mark_loc))

    def condition(self, raw: Mapping[Any, Any], loc: Loc) -> Condition | None:
        """A rule's whole `when:`, or None when any part of it is invalid."""
        tests = [self.entry(key, spec, (*loc, key)) for key, spec in raw.items()]
        if any(test is None for test in tests):
            return None
        exact = {
            _field_key(key): values
            for key, spec in raw.items()
            if (values := _exact_values(key, spec)) is not None
        }
        names_type = any(_field_key(key) == "type" for key in raw)
        return Condition(_all_of([t for t in tests if t]), exact, names_type)

    def conditions(self, raw: Any, loc: Loc) -> EventTest | None:
        """One branch of `any:`: a non-empty mapping of conditions, ANDed."""
        if not isinstance(raw, dict) or not raw:
            self.fail(loc, f"must be a mapping of conditions, got {show(raw)}")
            return None
        made = self.condition(raw, loc)
        return made.test if made else None

    def entry(self, key: Any, spec: Any, loc: Loc) -> EventTest | None:
        """One `key: spec` of a `when:` mapping: `any`, `tags`, `custom_fields` or a field."""
        if key == "any":
            return self.any(spec, loc)
        if key == "tags":
            return self.tags(spec, loc)
        if key == "custom_fields":
            return self.custom_fields(spec, loc)
        if not isinstance(key, str) or not all(key.split(".")):
            self.fail(loc, f"must be a field name such as 'status_id', got {key!r}")
            return None
        if key in _TAG_MODES:
            self.fail(loc, f"{key!r} is a tags test; write tags: {{{key}: [...]}}")
            return None
        if key in OPERATORS:
            self.fail(loc, f"{key!r} is an operator; put it under a field: status_id: {{{key}: …}}")
            return None
        test = self.value(spec, loc, integer=key.rsplit(".", 1)[-1] in _ID_FIELDS)
        return _on_field(_path_getter(tuple(key.split("."))), key, test) if test else None

    def any(self, spec: Any, loc: Loc) -> EventTest | None:
        if not isinstance(spec, list) or not spec:
            self.fail(loc, f"must be a list of condition mappings, got {show(spec)}")
            return None
        branches = [self.conditions(branch, (*loc, i)) for i, branch in enumerate(spec)]
        return None if None in branches else _any_of([b for b in branches if b])

    def tags(self, spec: Any, loc: Loc) -> EventTest | None:
        if isinstance(spec, str) and spec:
            spec = {"any": [spec]}
        if isinstance(spec, list):
            self.fail(loc, "a list is ambiguous here; write {any: [...]} or {all: [...]}")
            return None
        if not isinstance(spec, dict) or not spec:
            self.fail(loc, f"must be a tag name or a mapping of any/all/none, got {show(spec)}")
            return None
        tests = [self.tag_mode(mode, names, (*loc, mode), loc) for mode, names in spec.items()]
        return None if None in tests else _all_of([t for t in tests if t])

    def tag_mode(self, mode: Any, names: Any, loc: Loc, parent: Loc) -> EventTest | None:
        if mode not in _TAG_MODES:
            hint = did_you_mean(mode, _TAG_MODES) or "; use any, all or none"
            self.fail(parent, f"unknown tag test {mode!r}{hint}", loc)
            return None
        wanted = [names] if isinstance(names, str) else names
        if not isinstance(wanted, list) or not wanted or not all(_is_text(n) for n in wanted):
            self.fail(loc, f"must be a tag name or a list of tag names, got {show(names)}")
            return None
        return _tags_test(mode, tuple(wanted))

    def custom_fields(self, spec: Any, loc: Loc) -> EventTest | None:
        if not isinstance(spec, dict) or not spec:
            message = f"must map field ids or names to conditions, got {show(spec)}"
            self.fail(loc, message)
            return None
        tests: list[EventTest | None] = []
        for key, value_spec in spec.items():
            if not is_int(key) and not _is_text(key):
                self.fail((*loc, key), f"must be a field id or name, got {key!r}")
                tests.append(None)
                continue
            field_key = int(key) if is_int(key) else key
            test = self.value(value_spec, (*loc, key))
            getter = _custom_field_getter(field_key)
            tests.append(_on_field(getter, f"custom_fields[{key!r}]", test) if test else None)
        return None if None in tests else _all_of([t for t in tests if t])

    def value(self, spec: Any, loc: Loc, integer: bool = False) -> ValueTest | None:
        """A field's spec: a value (equality), a list (any of) or a mapping of operators.

        `integer` is set for id fields, whose values must be integers.
        """
        if isinstance(spec, dict):
            return self.operators(spec, loc, integer)
        if isinstance(spec, list):
            return self.options(spec, loc, integer)
        operand = self.operand(spec, loc, integer)
        return None if operand is MISSING else _equals(operand)

    def operators(self, spec: dict[Any, Any], loc: Loc, integer: bool) -> ValueTest | None:
        if not spec:
            self.fail(loc, f"must set at least one of {', '.join(OPERATORS)}")
            return None
        tests = [self.operator(op, operand, loc, integer) for op, operand in spec.items()]
        return None if None in tests else _all_of([t for t in tests if t])

    def operator(self, op: Any, operand: Any, loc: Loc, integer: bool) -> ValueTest | None:
        """One `op: operand` of an operator mapping."""
        op_loc = (*loc, op)
        if op == "in" and not isinstance(operand, list):
            self.fail(op_loc, f"must be a list of values, got {show(operand)}")
            return None
        if op == "eq":
            value = self.operand(operand, op_loc, integer)
            return None if value is MISSING else _equals(value)
        if op in ("in", "not"):
            inner = self.value(operand, op_loc, integer)
            return _negated(inner, operand) if inner and op == "not" else inner
        if op == "exists":
            if isinstance(operand, bool):
                return _exists(operand)
            self.fail(op_loc, f"must be true or false, got {show(operand)}")
            return None
        if op in _COMPARISONS:
            if isinstance(operand, int | float) and not isinstance(operand, bool):
                return _compare(str(op), operand)
            self.fail(op_loc, f"must be a number, got {show(operand)}")
            return None
        hint = did_you_mean(op, OPERATORS) or f"; use {', '.join(OPERATORS)}"
        self.fail(loc, f"unknown operator {op!r}{hint}", op_loc)
        return None

    def options(self, spec: list[Any], loc: Loc, integer: bool) -> ValueTest | None:
        if not spec:
            self.fail(loc, "must list at least one value")
            return None
        options = [self.operand(item, (*loc, i), integer) for i, item in enumerate(spec)]
        return None if MISSING in options else _one_of(tuple(options))

    def operand(self, value: Any, loc: Loc, integer: bool) -> Any:
        """A value to compare with, or `MISSING` after reporting why it cannot be."""
        if value is None:
            self.fail(loc, "null matches nothing; use {exists: false} for a missing field")
        elif isinstance(value, dict | list):
            self.fail(loc, f"must be a single value, got {show(value)}")
        elif integer and not is_int(value):
            self.fail(loc, f"expected an integer, got {show(value)}")
        else:
            return int(value) if integer else value
        return MISSING


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _field_key(key: Any) -> str:
    """`message.type` and `type` are the same condition on a message event."""
    text = str(key)
    return text.removeprefix("message.") if text in ("message.type", "message.origin") else text


def _exact_values(key: Any, spec: Any) -> frozenset[Hashable] | None:
    """The only values a top-level `field: value` / `field: [..]` / `{in: [..]}` accepts."""
    if key in ("any", "tags", "custom_fields"):
        return None
    if isinstance(spec, dict) and len(spec) == 1 and set(spec) <= {"eq", "in"}:
        return _exact_values(key, next(iter(spec.values())))
    if isinstance(spec, list):
        return frozenset(_canonical(item) for item in spec)
    return frozenset({_canonical(spec)}) if not isinstance(spec, dict) else None
