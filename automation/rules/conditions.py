"""`when:` conditions: compiled once into tests, evaluated per event.

`compile_condition` turns a rule's `when:` mapping (fields with a value, a list of
values or operators; `any:`, `tags:` and `custom_fields:`) into a `Condition`,
reporting every mistake as a `Problem`. A compiled test returns `None` when an
event passes and a `Failure` when it does not: the field, what the rule expected and
what the event had, as data for `deliveries show` and as words for `rules test`; the
tests themselves are in `matchers`, where they find their values in `lookups`.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from automation.events.payloads import Event
from automation.rules.lookups import (
    custom_field_enums,
    custom_field_values,
    path_getter,
    tags_test,
)
from automation.rules.matchers import (
    COMPARISONS,
    EventTest,
    Failure,
    ValueTest,
    all_of,
    any_of,
    compare,
    equals,
    exists,
    negated,
    on_field,
    one_of,
)
from automation.rules.yamlfile import MISSING, Loc, Problem, did_you_mean, is_int, show

OPERATORS = ("eq", "in", "not", "exists", "gt", "gte", "lt", "lte")
#: What a custom field's condition may say besides `OPERATORS`: its option ids.
ENUM = "enum"
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

    `check(event)` is None when the event passes, else the first `Failure`; `test`
    says it in words. `failures` lists every top-level condition the event fails
    (explanations; matching stops at the first). `exact` maps top-level fields to
    the only values they accept, so `conflicts()` can see that `status_id: 1` and
    `status_id: 2` never fire together. `names_type` says whether `when` sets a
    message `type` (see loop safety).
    """

    check: EventTest
    exact: Mapping[str, frozenset[Hashable]] = field(default_factory=dict)
    names_type: bool = False
    parts: tuple[EventTest, ...] = ()

    def test(self, event: Event) -> str | None:
        """None when the event passes, else why not in words."""
        failure = self.check(event)
        return None if failure is None else str(failure)

    def failures(self, event: Event) -> list[Failure]:
        """Every top-level condition the event fails, in the file's order."""
        return [failure for part in self.parts if (failure := part(event)) is not None]


def compile_condition(
    raw: Mapping[Any, Any], loc: Loc, problems: list[Problem]
) -> Condition | None:
    """A rule's whole `when:` at `loc`, or None after adding its problems to `problems`."""
    return _WhenCompiler(problems).condition(raw, loc)


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
        parts = tuple(t for t in tests if t)
        return Condition(all_of(parts), exact, names_type, parts)

    def conditions(self, raw: Any, loc: Loc) -> EventTest | None:
        """One branch of `any:`: a non-empty mapping of conditions, ANDed."""
        if not isinstance(raw, dict) or not raw:
            self.fail(loc, f"must be a mapping of conditions, got {show(raw)}")
            return None
        made = self.condition(raw, loc)
        return made.check if made else None

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
        return on_field(path_getter(tuple(key.split("."))), key, test) if test else None

    def any(self, spec: Any, loc: Loc) -> EventTest | None:
        if not isinstance(spec, list) or not spec:
            self.fail(loc, f"must be a list of condition mappings, got {show(spec)}")
            return None
        branches = [self.conditions(branch, (*loc, i)) for i, branch in enumerate(spec)]
        return None if None in branches else any_of([b for b in branches if b])

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
        return None if None in tests else all_of([t for t in tests if t])

    def tag_mode(self, mode: Any, names: Any, loc: Loc, parent: Loc) -> EventTest | None:
        if mode not in _TAG_MODES:
            hint = did_you_mean(mode, _TAG_MODES) or "; use any, all or none"
            self.fail(parent, f"unknown tag test {mode!r}{hint}", loc)
            return None
        wanted = [names] if isinstance(names, str) else names
        if not isinstance(wanted, list) or not wanted or not all(_is_text(n) for n in wanted):
            self.fail(loc, f"must be a tag name or a list of tag names, got {show(names)}")
            return None
        return tags_test(mode, tuple(wanted))

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
            tests.append(self.custom_field(int(key) if is_int(key) else key, value_spec, loc))
        return None if None in tests else all_of([t for t in tests if t])

    def custom_field(self, key: int | str, spec: Any, loc: Loc) -> EventTest | None:
        """One custom field's condition: on its values, and with `enum:` on the ids of
        its select options, which stay the same when someone renames an option."""
        label, field_loc = f"custom_fields[{key!r}]", (*loc, key)
        if not isinstance(spec, dict) or ENUM not in spec:
            test = self.value(spec, field_loc)
            return on_field(custom_field_values(key), label, test) if test else None
        on_enums = self.value(spec[ENUM], (*field_loc, ENUM), integer=True)
        rest = {op: operand for op, operand in spec.items() if op != ENUM}
        on_values = self.operators(rest, field_loc, False) if rest else None
        if on_enums is None or (rest and on_values is None):
            return None
        tests = [on_field(custom_field_enums(key), f"{label}.{ENUM}", on_enums)]
        if on_values is not None:
            tests.append(on_field(custom_field_values(key), label, on_values))
        return all_of(tests)

    def value(self, spec: Any, loc: Loc, integer: bool = False) -> ValueTest | None:
        """A field's spec: a value (equality), a list (any of) or a mapping of operators.

        `integer` is set for id fields, whose values must be integers.
        """
        if isinstance(spec, dict):
            return self.operators(spec, loc, integer)
        if isinstance(spec, list):
            return self.options(spec, loc, integer)
        operand = self.operand(spec, loc, integer)
        return None if operand is MISSING else equals(operand)

    def operators(self, spec: dict[Any, Any], loc: Loc, integer: bool) -> ValueTest | None:
        if not spec:
            self.fail(loc, f"must set at least one of {', '.join(OPERATORS)}")
            return None
        tests = [self.operator(op, operand, loc, integer) for op, operand in spec.items()]
        return None if None in tests else all_of([t for t in tests if t])

    def operator(self, op: Any, operand: Any, loc: Loc, integer: bool) -> ValueTest | None:
        """One `op: operand` of an operator mapping."""
        op_loc = (*loc, op)
        if op == "in" and not isinstance(operand, list):
            self.fail(op_loc, f"must be a list of values, got {show(operand)}")
            return None
        if op == "eq":
            value = self.operand(operand, op_loc, integer)
            return None if value is MISSING else equals(value)
        if op in ("in", "not"):
            inner = self.value(operand, op_loc, integer)
            return negated(inner, operand) if inner and op == "not" else inner
        if op == "exists":
            if isinstance(operand, bool):
                return exists(operand)
            self.fail(op_loc, f"must be true or false, got {show(operand)}")
            return None
        if op in COMPARISONS:
            if isinstance(operand, int | float) and not isinstance(operand, bool):
                return compare(str(op), operand)
            self.fail(op_loc, f"must be a number, got {show(operand)}")
            return None
        hint = did_you_mean(op, OPERATORS) or f"; use {', '.join(OPERATORS)}"
        if op == ENUM:
            hint = "; 'enum' (select option ids) is a condition of a custom field only"
        self.fail(loc, f"unknown operator {op!r}{hint}", op_loc)
        return None

    def options(self, spec: list[Any], loc: Loc, integer: bool) -> ValueTest | None:
        if not spec:
            self.fail(loc, "must list at least one value")
            return None
        options = [self.operand(item, (*loc, i), integer) for i, item in enumerate(spec)]
        return None if MISSING in options else one_of(tuple(options))

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
