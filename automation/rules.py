"""Rules: which amoCRM events start which Salesbot, on which entity, and when.

Kept in three layers, as Alertmanager keeps its routing tree:

1. **Reading** (`load_rules`): the YAML is composed into nodes that remember their
   line and column, turned into plain data, checked node by node by strict pydantic
   models (`extra="forbid"`), then cross-checked (duplicate names, an entity the event
   type never carries). Every problem of a file is reported at once, each as
   `file:line:col: rules[i] (name="…"): path: message`.
2. **Compiling**: conditions become small closures that return `None` when an event
   passes and a reason when it does not; rules are indexed by concrete event type, so
   an event only meets the rules that listen to its type.
3. **Matching** (`RuleSet.match`, `RuleSet.explain`): pure functions of (event, now).

`RulesLoader` swaps in a changed file and keeps the last good rules when it is broken.
Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from automation.errors import PayloadError, RulesError
from automation.events import (
    ACTION_VERBS,
    ENTITY_TYPE_CODES,
    EVENT_TYPES,
    FAMILY_ACTIONS,
    Event,
    Payload,
    decode_body,
)

logger = logging.getLogger(__name__)

#: Event types a rule may name: everything the decoder produces except `unknown`.
RULE_EVENT_TYPES: tuple[str, ...] = tuple(name for name in EVENT_TYPES if name != "unknown")
#: amoCRM's webhook setting names (`status_lead`) → our event types, for "did you mean".
_SETTING_NAMES: Mapping[str, str] = {
    f"{action}_{family}": f"{family}.{ACTION_VERBS[action]}"
    for family, actions in FAMILY_ACTIONS.items()
    for action in actions
}
#: Which entity ids each event family can carry (see `events.entity_ids`).
_CARRIED: Mapping[str, frozenset[str]] = {
    "lead": frozenset({"lead"}),
    "contact": frozenset({"contact"}),
    "company": frozenset({"company"}),
    "customer": frozenset({"customer"}),
    "task": frozenset(ENTITY_TYPE_CODES),
    "talk": frozenset({"lead", "contact"}),
    "message": frozenset({"lead", "contact"}),
    "outgoing_message": frozenset({"lead", "contact"}),
    "unsorted": frozenset({"lead", "contact"}),
}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MAX_DURATION = timedelta(days=365)
_OUTSIDE_HOURS = ("schedule", "skip")
_MISSING: Final = object()

Loc = tuple[Any, ...]
T = TypeVar("T")
Test = Callable[[T], str | None]
EventTest = Callable[[Event], str | None]
ValueTest = Callable[[Any], str | None]


# ------------------------------------------------------------------------- durations


def parse_duration(text: object) -> timedelta:
    """`30s`, `10m`, `24h`, `7d` or combinations such as `1h30m` → a timedelta.

    Units must come in the order d, h, m, s, each at most once, so `30m1h` (more often
    a typo than a wish) is rejected rather than guessed. A bare number is rejected too:
    nobody can tell whether `cooldown: 24` means hours or seconds. Raises `ValueError`
    with the message a rules file shows.
    """
    if isinstance(text, str):
        compact = text.replace(" ", "")
        parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", compact)
        if compact and parts:
            days, hours, minutes, seconds = (int(part or 0) for part in parts.groups())
            total = days * 86400 + hours * 3600 + minutes * 60 + seconds
            if total > _MAX_DURATION.total_seconds():
                raise ValueError(f"must be at most 365d, got {text!r}")
            return timedelta(seconds=total)
    raise ValueError(
        f"must be a duration such as '30s', '10m', '24h', '7d' or '1h30m', got {text!r}"
    )


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration`: `timedelta(minutes=90)` → `1h30m`."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_instant(text: object) -> datetime:
    """An ISO 8601 moment → an aware UTC datetime; a moment without offset is UTC."""
    try:
        moment = datetime.fromisoformat(str(text).strip()) if isinstance(text, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(
            f"must be an ISO 8601 time such as '2024-10-01T09:00:00+03:00', got {text!r}"
        )
    return as_utc(moment)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# ------------------------------------------------------------------------------ YAML


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: `on`, `yes`, `no` stay text and `18:00` stays a time of day.

    PyYAML follows YAML 1.1, where the key `on:` is the boolean true and an unquoted
    `18:00` is the base-60 integer 1080; either would silently break a rules file.
    """


_YAML11_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp")}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?[0-9]+$", "-+0123456789"),
    ("float", r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$", "-+0123456789."),
):
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))

_SCALARS: Mapping[str, Callable[[str], Any]] = {
    "tag:yaml.org,2002:str": str,
    "tag:yaml.org,2002:int": int,
    "tag:yaml.org,2002:float": float,
    "tag:yaml.org,2002:bool": lambda text: text.lower() == "true",
    "tag:yaml.org,2002:null": lambda text: None,
}
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _compose(text: str, filename: str) -> yaml.Node | None:
    """Parse `text` into a node tree with marks; syntax errors become `RulesError`."""
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise RulesError([_yaml_problem(exc, filename)], filename) from exc
    except yaml.YAMLError as exc:
        raise RulesError([f"{filename}: invalid YAML: {exc}"], filename) from exc
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError, filename: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
    context = ""
    if exc.context:
        started = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        context = f" ({exc.context}{started})"
    return f"{where}: invalid YAML: {exc.problem}{context}"


@dataclass
class _Problem:
    """One validation problem: where (as a data path) and what."""

    loc: Loc
    message: str
    mark_loc: Loc | None = None  # point here instead of `loc` (an unknown key itself)
    mark: yaml.Mark | None = None  # or exactly here (a duplicate key)


class _Converter:
    """Turn composed YAML nodes into plain data, reporting duplicate keys.

    PyYAML's own constructor keeps the last of two equal keys without a word, so a
    rule with two `when:` blocks would silently lose the first. Merge keys (`<<:`)
    are honoured, with the mapping's own keys winning, as YAML specifies.
    """

    def __init__(self, problems: list[_Problem]) -> None:
        self.problems = problems
        self.unreadable: list[Loc] = []  # values reported here, not to be judged again
        self._open: set[int] = set()

    def convert(self, node: yaml.Node, loc: Loc) -> Any:
        """Plain data for `node`; problems are collected, never raised."""
        if id(node) in self._open:
            self.problems.append(_Problem(loc, "recursive alias", mark=node.start_mark))
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
            known = len(self.problems)
            value = self._scalar(node, loc)
            if len(self.problems) > known:
                self.unreadable.append(loc)
            return value
        finally:
            self._open.discard(id(node))

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        construct = _SCALARS.get(node.tag)
        try:
            if construct is None:
                raise ValueError(f"unsupported YAML tag {node.tag!r}")
            return construct(node.value)
        except ValueError as exc:
            self.problems.append(_Problem(loc, str(exc), mark=node.start_mark))
            return None

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        own: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._merge(value_node, loc, merged)
            elif not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    _Problem(loc, "keys must be plain text", mark=key_node.start_mark)
                )
            elif (key := self._scalar(key_node, loc)) in own:
                self.problems.append(
                    _Problem(loc, f"duplicate key {key!r}", mark=key_node.start_mark)
                )
            else:
                own[key] = self.convert(value_node, (*loc, key))
        return {**merged, **own}

    def _merge(self, node: yaml.Node, loc: Loc, merged: dict[Any, Any]) -> None:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            value = self.convert(source, loc)
            if not isinstance(value, dict):
                message = "'<<' can only merge mappings"
                self.problems.append(_Problem(loc, message, mark=source.start_mark))
                continue
            for key, item in value.items():
                merged.setdefault(key, item)


def _pairs(node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    """Key/value node pairs of a mapping, its own first, then those of `<<:` merges."""
    merges = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merges.append(value_node)
        else:
            yield key_node, value_node
    for source in merges:
        for item in source.value if isinstance(source, yaml.SequenceNode) else [source]:
            if isinstance(item, yaml.MappingNode):
                yield from _pairs(item)


def _child(node: yaml.Node | None, step: Any) -> tuple[yaml.Mark, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in _pairs(node):
            construct = _SCALARS.get(key_node.tag)
            if isinstance(key_node, yaml.ScalarNode) and construct is not None:
                try:
                    if construct(key_node.value) == step:
                        return key_node.start_mark, value_node
                except ValueError:
                    continue
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step].start_mark, node.value[step]
    return None


def _locate(root: yaml.Node, loc: Loc) -> tuple[yaml.Mark, Loc]:
    """The mark of the deepest node `loc` reaches, and `loc` as the user wrote it.

    Validation wraps a single window or event type in a list; such an index has no
    node of its own, so it is skipped and left out of the path shown.
    """
    node: yaml.Node | None = root
    mark = root.start_mark
    shown: list[Any] = []
    for step in loc:
        found = _child(node, step)
        if found is not None:
            mark, node = found
        elif isinstance(step, int) and node is not None and not _is_sequence(node):
            continue
        else:
            node = None
        shown.append(step)
    return mark, tuple(shown)


def _is_sequence(node: yaml.Node) -> bool:
    return isinstance(node, yaml.SequenceNode)


def _render(problems: list[_Problem], root: yaml.Node, data: Any, filename: str) -> list[str]:
    """Problems → `file:line:col: where: message` lines, in file order."""
    rendered = []
    for problem in problems:
        mark = problem.mark or _locate(root, problem.mark_loc or problem.loc)[0]
        where = _where(_locate(root, problem.loc)[1], data)
        text = f"{where}: {problem.message}" if where else problem.message
        line = f"{filename}:{mark.line + 1}:{mark.column + 1}: {text}"
        rendered.append((mark.line, mark.column, line))
    return [line for *_, line in sorted(rendered, key=lambda item: item[:2])]


def _where(loc: Loc, data: Any) -> str:
    """`("rules", 2, "launch", "bot_id")` → `rules[2] (name="vip"): launch.bot_id`."""
    head, rest = "", loc
    if len(loc) >= 2 and isinstance(loc[1], int) and loc[0] in ("rules", "cases"):
        head, rest = f"{loc[0]}[{loc[1]}]{_item_label(data, loc[0], loc[1])}", loc[2:]
    path = ""
    for step in rest:
        path += f"[{step}]" if isinstance(step, int) else (f".{step}" if path else str(step))
    return ": ".join(part for part in (head, path) if part)


def _item_label(data: Any, key: str, index: int) -> str:
    items = data.get(key) if isinstance(data, dict) else None
    item = items[index] if isinstance(items, list) and index < len(items) else None
    name = item.get("name") if isinstance(item, dict) else None
    return f" (name={json.dumps(name, ensure_ascii=False)})" if isinstance(name, str) else ""


# --------------------------------------------------------------- per-node validators


def _show(value: Any, limit: int = 60) -> str:
    """`repr` for messages, shortened: a pasted mapping should not flood the screen."""
    if value is _MISSING:
        return "missing"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(word: object, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _quoted(choices: Sequence[str]) -> str:
    return ", ".join(repr(choice) for choice in choices)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (
        isinstance(value, str) and value.isascii() and value.isdigit()
    )


def _positive_int(value: Any) -> int:
    if not _is_int(value) or int(value) <= 0:
        raise ValueError(f"must be a positive integer, got {_show(value)}")
    return int(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_show(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be non-empty text, got {_show(value)}")
    return value


def _rule_name(value: Any) -> str:
    """Names end up in the launch log and in dedupe keys, which `|` separates."""
    name = _text(value)
    if "|" in name:
        raise ValueError(f"must not contain '|', got {name!r}")
    return name


def _version(value: Any) -> int:
    if value != 1 or isinstance(value, bool):
        raise ValueError(f"must be 1, got {_show(value)}")
    return 1


def _entity(value: Any) -> str:
    if isinstance(value, str) and value in ENTITY_TYPE_CODES:
        return value
    choices = list(ENTITY_TYPE_CODES)
    hint = _did_you_mean(value, choices)
    raise ValueError(f"must be one of {_quoted(choices)}, got {_show(value)}{hint}")


def _outside_hours(value: Any) -> str:
    if isinstance(value, str) and value in _OUTSIDE_HOURS:
        return value
    hint = _did_you_mean(value, _OUTSIDE_HOURS)
    raise ValueError(f"must be one of {_quoted(_OUTSIDE_HOURS)}, got {_show(value)}{hint}")


def _event_pattern(value: Any) -> str:
    """An event type (`lead.status_changed`) or a wildcard (`lead.*`, `*`)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be an event type such as 'lead.status_changed', got {value!r}")
    if "*" in value and not expand_pattern(value):
        raise ValueError(f"wildcard {value!r} matches no event type")
    if "*" in value or value in RULE_EVENT_TYPES:
        return value
    suggestion = _SETTING_NAMES.get(value)
    hint = f"; did you mean {suggestion!r}?" if suggestion else _did_you_mean(value, EVENT_TYPES)
    raise ValueError(f"unknown event type {value!r}{hint}")


def expand_pattern(pattern: str) -> tuple[str, ...]:
    """Concrete event types a pattern names, in `EVENT_TYPES` order.

    Wildcards never reach `outgoing_message.added` unless the pattern names that
    family: a `*` rule that answered our own outgoing messages would loop.
    """
    if "*" not in pattern:
        return (pattern,) if pattern in RULE_EVENT_TYPES else ()
    explicit = pattern.startswith("outgoing_message")
    return tuple(
        name
        for name in RULE_EVENT_TYPES
        if fnmatchcase(name, pattern) and (explicit or not name.startswith("outgoing_message"))
    )


def _as_list(value: Any) -> Any:
    """Let a single item stand for a one-item list (`on: lead.added`)."""
    return [value] if isinstance(value, str) else value


def _non_empty(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("must name at least one event type")
    return value


def _duration(value: Any) -> timedelta:
    return parse_duration(value)


def _instant(value: Any) -> datetime:
    return parse_instant(value)


def _conditions(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of conditions, got {_show(value)}")
    return value


def _rules_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of rules, got {_show(value)}")
    return value


def _windows(value: Any) -> Any:
    """One window, a list of windows, or `always` (which overrides `defaults`)."""
    if value == "always":
        return []
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and value:
        return value
    raise ValueError(
        "must be a window {timezone, days, from, to}, a list of windows or 'always', "
        f"got {_show(value)}"
    )


def _timezone(value: Any) -> str:
    try:
        if isinstance(value, str) and value:
            ZoneInfo(value)
            return value
    except (ZoneInfoNotFoundError, ValueError):
        pass
    hint = _did_you_mean(value, sorted(available_timezones()))
    raise ValueError(f"unknown time zone {_show(value)}{hint}")


def _days(value: Any) -> frozenset[int]:
    """`[mon, tue]`, `mon-fri`, `[mon-fri, sat]` → weekday numbers (Monday is 0)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"must be a list of days such as [mon-fri, sat], got {_show(value)}")
    days: set[int] = set()
    for item in items:
        days.update(_day_range(item))
    return frozenset(days)


def _day_range(item: Any) -> list[int]:
    first, _, last = str(item).partition("-") if isinstance(item, str) else ("", "", "")
    start = _day(first.strip(), item)
    end = _day(last.strip(), item) if last else start
    return [(start + offset) % 7 for offset in range((end - start) % 7 + 1)]


def _day(name: str, item: Any) -> int:
    key = name.lower()
    if key in _DAYS:
        return _DAYS.index(key)
    if key in _FULL_DAYS:
        return _FULL_DAYS.index(key)
    raise ValueError(f"unknown day {_show(item)}{_did_you_mean(key, _DAYS + _FULL_DAYS)}")


def _clock(value: Any, *, end: bool = False) -> int:
    """`"09:30"` → minutes after midnight; `"24:00"` is allowed as an end."""
    found = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if isinstance(value, str) else None
    minutes = int(found[1]) * 60 + int(found[2]) if found and int(found[2]) < 60 else -1
    if not 0 <= minutes < 1440 + (1 if end else 0):
        raise ValueError(f"must be a time of day such as '09:00', got {_show(value)}")
    return minutes


def _clock_end(value: Any) -> int:
    return _clock(value, end=True)


BotId = Annotated[int, PlainValidator(_positive_int)]
Flag = Annotated[bool, PlainValidator(_bool)]
Duration = Annotated[timedelta, PlainValidator(_duration)]
Instant = Annotated[datetime, PlainValidator(_instant)]
OutsideHours = Annotated[str, PlainValidator(_outside_hours)]
EventPattern = Annotated[str, PlainValidator(_event_pattern)]


# ------------------------------------------------------------------- pydantic schema


class _Spec(BaseModel):
    """Strict base: unknown keys are errors, and specs never change once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowSpec(_Spec):
    """One active-hours window: `{timezone, days, from, to}`."""

    timezone: Annotated[str, PlainValidator(_timezone)]
    days: Annotated[frozenset[int], PlainValidator(_days)] = frozenset(range(7))
    start: Annotated[int, PlainValidator(_clock)] = Field(alias="from")
    end: Annotated[int, PlainValidator(_clock_end)] = Field(alias="to")

    @model_validator(mode="after")
    def _not_empty(self) -> WindowSpec:
        if self.start == self.end:
            shown = f"{self.start // 60:02d}:{self.start % 60:02d}"
            raise ValueError(f"'from' and 'to' are both {shown!r}, so the window is empty")
        return self


Windows = Annotated[tuple[WindowSpec, ...], BeforeValidator(_windows)]


class LaunchSpec(_Spec):
    """`launch:` which bot, on which entity of the event."""

    bot_id: BotId
    entity: Annotated[str, PlainValidator(_entity)]


class DefaultsSpec(_Spec):
    """`defaults:` values every rule inherits unless it sets its own."""

    cooldown: Duration | None = None
    delay: Duration | None = None
    active_hours: Windows | None = None
    outside_hours: OutsideHours | None = None


class RuleSpec(_Spec):
    """One entry of `rules:` as written."""

    name: Annotated[str, PlainValidator(_rule_name)]
    on: Annotated[tuple[EventPattern, ...], BeforeValidator(_as_list), BeforeValidator(_non_empty)]
    when: Annotated[dict[Any, Any], PlainValidator(_conditions)] = Field(default_factory=dict)
    launch: LaunchSpec
    cooldown: Duration | None = None
    delay: Duration | None = None
    active_hours: Windows | None = None
    outside_hours: OutsideHours | None = None
    enabled: Flag = True
    stop: Flag = False


class FileSpec(_Spec):
    """The top level of a rules file; `defaults` and each rule are checked apart."""

    version: Annotated[int, PlainValidator(_version)]
    defaults: Any = None
    rules: Annotated[list[Any], PlainValidator(_rules_list)]


#: Keys people put one level off, and where they belong.
_MISPLACED: Mapping[tuple[str, str], str] = {
    **{
        ("LaunchSpec", key): "it belongs on the rule, beside 'launch'"
        for key in RuleSpec.model_fields
    },
    **{("RuleSpec", key): "it belongs under 'launch'" for key in LaunchSpec.model_fields},
    **{("FileSpec", key): "it belongs under 'defaults'" for key in DefaultsSpec.model_fields},
}

M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], raw: Any, prefix: Loc, problems: list[_Problem]) -> M | None:
    """`model.model_validate(raw)`, with every error turned into a `_Problem`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_problem(error, model, prefix) for error in exc.errors())
        return None


def _problem(error: ErrorDetails, model: type[BaseModel], prefix: Loc) -> _Problem:
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "missing":
        return _Problem((*prefix, *loc[:-1]), f"missing required key {loc[-1]!r}")
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        return _Problem(
            (*prefix, *loc[:-1]),
            f"unknown key {loc[-1]!r}{_key_hint(loc[-1], owner)}",
            mark_loc=(*prefix, *loc),
        )
    return _Problem((*prefix, *loc), _error_text(error))


def _error_text(error: ErrorDetails) -> str:
    context = error.get("ctx") or {}
    if error["type"] == "value_error" and "error" in context:
        return str(context["error"])
    got = _show(error.get("input"))
    if error["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping, got {got}"
    if error["type"] in ("list_type", "tuple_type"):
        return f"must be a list, got {got}"
    message = error["msg"]
    return f"{message[:1].lower()}{message[1:]}, got {got}"


def _key_hint(key: Any, owner: type[BaseModel] | None) -> str:
    if owner is None:
        return ""
    misplaced = _MISPLACED.get((owner.__name__, str(key)))
    if misplaced:
        return f"; {misplaced}"
    return _did_you_mean(key, [info.alias or name for name, info in owner.model_fields.items()])


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The nested model that `loc` points into, for the keys it allows."""
    current: type[BaseModel] | None = model
    for step in loc:
        if current is None or isinstance(step, int):
            continue
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        info = fields.get(step)
        current = _nested_model(info.annotation) if info else None
    return current


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------- conditions

_OPERATORS = ("eq", "in", "not", "exists", "gt", "gte", "lt", "lte")
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

    A list (a multi-value custom field) equals a value it contains.
    """
    if isinstance(actual, list):
        return any(_same(expected, item) for item in actual)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, str):
        return _number(actual) == expected
    if isinstance(expected, str) and isinstance(actual, int | float):
        return expected == str(actual)
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
    return value is not _MISSING and value not in (None, "", [])


def _equals(expected: Any) -> ValueTest:
    def test(value: Any) -> str | None:
        if value is _MISSING:
            return "missing"
        return None if _same(expected, value) else f"{_show(value)} is not {expected!r}"

    return test


def _one_of(options: tuple[Any, ...]) -> ValueTest:
    def test(value: Any) -> str | None:
        if value is _MISSING:
            return "missing"
        if any(_same(option, value) for option in options):
            return None
        return f"{_show(value)} is not in {list(options)!r}"

    return test


def _negated(inner: ValueTest, spec: Any) -> ValueTest:
    def test(value: Any) -> str | None:
        return f"{_show(value)} matches not: {spec!r}" if inner(value) is None else None

    return test


def _exists(wanted: bool) -> ValueTest:
    def test(value: Any) -> str | None:
        if _present(value) == wanted:
            return None
        return "missing" if wanted else f"{_show(value)} is present"

    return test


def _compare(name: str, bound: int | float) -> ValueTest:
    sign, compare = _COMPARISONS[name]

    def test(value: Any) -> str | None:
        if value is _MISSING:
            return "missing"
        numbers = _numbers(value)
        if not numbers:
            return f"{_show(value)} is not a number"
        if any(compare(number, bound) for number in numbers):
            return None
        return f"{_show(value)} is not {sign} {bound!r}"

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
                value = value.get(step, _MISSING)
            elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
                value = value[int(step)]
            else:
                return _MISSING
        return value

    return get


def _custom_field_getter(key: int | str) -> Callable[[Event], Any]:
    """Values of one custom field (legacy shape), found by id, name or code."""

    def get(event: Event) -> Any:
        for item in event.data.get("custom_fields") or ():
            if isinstance(item, Mapping) and _is_field(item, key):
                values = item.get("values") or []
                return [v.get("value") if isinstance(v, Mapping) else v for v in values]
        return _MISSING

    return get


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
    return int(value) if _is_int(value) else value


class _WhenCompiler:
    """Compile `when:` mappings into tests, collecting every problem on the way."""

    def __init__(self, problems: list[_Problem]) -> None:
        self.problems = problems

    def fail(self, loc: Loc, message: str, mark_loc: Loc | None = None) -> None:
        self.problems.append(_Problem(loc, message, mark_loc))

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
            self.fail(loc, f"must be a mapping of conditions, got {_show(raw)}")
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
        if key in _OPERATORS:
            self.fail(loc, f"{key!r} is an operator; put it under a field: status_id: {{{key}: …}}")
            return None
        test = self.value(spec, loc, integer=key.rsplit(".", 1)[-1] in _ID_FIELDS)
        return _on_field(_path_getter(tuple(key.split("."))), key, test) if test else None

    def any(self, spec: Any, loc: Loc) -> EventTest | None:
        if not isinstance(spec, list) or not spec:
            self.fail(loc, f"must be a list of condition mappings, got {_show(spec)}")
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
            self.fail(loc, f"must be a tag name or a mapping of any/all/none, got {_show(spec)}")
            return None
        tests = [self.tag_mode(mode, names, (*loc, mode), loc) for mode, names in spec.items()]
        return None if None in tests else _all_of([t for t in tests if t])

    def tag_mode(self, mode: Any, names: Any, loc: Loc, parent: Loc) -> EventTest | None:
        if mode not in _TAG_MODES:
            hint = _did_you_mean(mode, _TAG_MODES) or "; use any, all or none"
            self.fail(parent, f"unknown tag test {mode!r}{hint}", loc)
            return None
        wanted = [names] if isinstance(names, str) else names
        if not isinstance(wanted, list) or not wanted or not all(_is_text(n) for n in wanted):
            self.fail(loc, f"must be a tag name or a list of tag names, got {_show(names)}")
            return None
        return _tags_test(mode, tuple(wanted))

    def custom_fields(self, spec: Any, loc: Loc) -> EventTest | None:
        if not isinstance(spec, dict) or not spec:
            message = f"must map field ids or names to conditions, got {_show(spec)}"
            self.fail(loc, message)
            return None
        tests: list[EventTest | None] = []
        for key, value_spec in spec.items():
            if not _is_int(key) and not _is_text(key):
                self.fail((*loc, key), f"must be a field id or name, got {key!r}")
                tests.append(None)
                continue
            field_key = int(key) if _is_int(key) else key
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
        return None if operand is _MISSING else _equals(operand)

    def operators(self, spec: dict[Any, Any], loc: Loc, integer: bool) -> ValueTest | None:
        if not spec:
            self.fail(loc, f"must set at least one of {', '.join(_OPERATORS)}")
            return None
        tests = [self.operator(op, operand, loc, integer) for op, operand in spec.items()]
        return None if None in tests else _all_of([t for t in tests if t])

    def operator(self, op: Any, operand: Any, loc: Loc, integer: bool) -> ValueTest | None:
        """One `op: operand` of an operator mapping."""
        op_loc = (*loc, op)
        if op == "in" and not isinstance(operand, list):
            self.fail(op_loc, f"must be a list of values, got {_show(operand)}")
            return None
        if op == "eq":
            value = self.operand(operand, op_loc, integer)
            return None if value is _MISSING else _equals(value)
        if op in ("in", "not"):
            inner = self.value(operand, op_loc, integer)
            return _negated(inner, operand) if inner and op == "not" else inner
        if op == "exists":
            if isinstance(operand, bool):
                return _exists(operand)
            self.fail(op_loc, f"must be true or false, got {_show(operand)}")
            return None
        if op in _COMPARISONS:
            if isinstance(operand, int | float) and not isinstance(operand, bool):
                return _compare(str(op), operand)
            self.fail(op_loc, f"must be a number, got {_show(operand)}")
            return None
        hint = _did_you_mean(op, _OPERATORS) or f"; use {', '.join(_OPERATORS)}"
        self.fail(loc, f"unknown operator {op!r}{hint}", op_loc)
        return None

    def options(self, spec: list[Any], loc: Loc, integer: bool) -> ValueTest | None:
        if not spec:
            self.fail(loc, "must list at least one value")
            return None
        options = [self.operand(item, (*loc, i), integer) for i, item in enumerate(spec)]
        return None if _MISSING in options else _one_of(tuple(options))

    def operand(self, value: Any, loc: Loc, integer: bool) -> Any:
        """A value to compare with, or `_MISSING` after reporting why it cannot be."""
        if value is None:
            self.fail(loc, "null matches nothing; use {exists: false} for a missing field")
        elif isinstance(value, dict | list):
            self.fail(loc, f"must be a single value, got {_show(value)}")
        elif integer and not _is_int(value):
            self.fail(loc, f"expected an integer, got {value!r}")
        else:
            return int(value) if integer else value
        return _MISSING


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


# -------------------------------------------------------------------- active hours


@dataclass(frozen=True)
class Window:
    """Days of the week and a time range in one time zone.

    A range whose end is not after its start runs overnight: `22:00`–`06:00` on
    Monday is Monday 22:00 to Tuesday 06:00.
    """

    zone: ZoneInfo
    days: frozenset[int]
    start: int  # minutes after midnight
    end: int  # minutes after midnight; 1440 means midnight at the end of the day

    def intervals(self, moment: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals (UTC) that start from the local day before `moment` on."""
        today = moment.astimezone(self.zone).date()
        for offset in range(-1, 8):
            day = today + timedelta(days=offset)
            if day.weekday() in self.days:
                end_day = day + timedelta(days=1) if self.end <= self.start else day
                yield _local(day, self.start, self.zone), _local(end_day, self.end, self.zone)


def _local(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """Wall-clock time `minutes` after local midnight of `day`, as UTC."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    return (midnight + timedelta(minutes=minutes)).astimezone(UTC)


@dataclass(frozen=True)
class ActiveHours:
    """The windows in which a rule may launch; outside them it waits or skips."""

    windows: tuple[Window, ...]

    def next_open(self, moment: datetime) -> datetime:
        """`moment` if a window is open then, else the start of the next window."""
        starts = []
        for window in self.windows:
            for start, end in window.intervals(moment):
                if start <= moment < end:
                    return moment
                if start > moment:
                    starts.append(start)
        return min(starts)


def _active_hours(windows: tuple[WindowSpec, ...] | None) -> ActiveHours | None:
    if not windows:
        return None
    return ActiveHours(tuple(Window(ZoneInfo(w.timezone), w.days, w.start, w.end) for w in windows))


# ----------------------------------------------------------------- rules, launches


@dataclass(frozen=True)
class Launch:
    """One bot to start on one entity, not before a moment (UTC)."""

    rule: str
    bot_id: int
    entity: str
    entity_type: int
    entity_id: int
    event: Event
    not_before: datetime
    cooldown: timedelta | None

    @property
    def dedupe_key(self) -> str:
        """Same rule, bot, entity and change → same key, whichever delivery carried it."""
        return f"{self.rule}|{self.bot_id}|{self.entity_type}|{self.entity_id}|{self.event.change}"


@dataclass(frozen=True)
class Decision:
    """What one rule made of one event: matched or why not, and the launch if any.

    `matched` means the rule's `on` and `when` accepted the event; a matched rule
    can still yield no launch (the event lacks the entity, or it is outside active
    hours with `outside_hours: skip`), and `reason` then says so.
    """

    rule: str
    matched: bool
    reason: str
    launch: Launch | None


def _is_echo(event: Event) -> bool:
    """Outgoing `message.added`: answering it would make a bot talk to itself."""
    return event.type == "message.added" and event.data.get("type") != "incoming"


@dataclass(frozen=True, eq=False)
class Rule:
    """A compiled rule, defaults already applied."""

    name: str
    on: tuple[str, ...]
    event_types: frozenset[str]
    bot_id: int
    entity: str
    condition: Condition
    cooldown: timedelta | None = None
    delay: timedelta = timedelta(0)
    active_hours: ActiveHours | None = None
    outside_hours: str = "schedule"
    enabled: bool = True
    stop: bool = False

    @property
    def entity_type(self) -> int:
        """The salesbot API's code for `entity` (lead 2, contact 1, …)."""
        return ENTITY_TYPE_CODES[self.entity]

    def decide(self, event: Event, now: datetime) -> Decision:
        """Match one event of a type this rule listens to, at `now` (aware UTC)."""
        reason = self.why_not(event)
        if reason is not None:
            return Decision(self.name, False, reason, None)
        return self._launch(event, now)

    def why_not(self, event: Event) -> str | None:
        """None when the rule accepts the event, else the reason it does not."""
        if not self.enabled:
            return "disabled (enabled: false)"
        if _is_echo(event) and not self.condition.names_type:
            kind = event.data.get("type")
            return f"message type is {kind!r}; without a 'type' condition only incoming match"
        return self.condition.test(event)

    def _launch(self, event: Event, now: datetime) -> Decision:
        entity_id = event.entities.get(self.entity)
        if entity_id is None:
            carried = ", ".join(event.entities) or "none"
            reason = f"matched, but the event carries no {self.entity} id (it has: {carried})"
            return Decision(self.name, True, reason, None)
        due = now + self.delay
        not_before = self.active_hours.next_open(due) if self.active_hours else due
        if not_before != due and self.outside_hours == "skip":
            reason = f"matched, but {_iso(due)} is outside active hours (outside_hours: skip)"
            return Decision(self.name, True, reason, None)
        launch = Launch(
            self.name,
            self.bot_id,
            self.entity,
            self.entity_type,
            entity_id,
            event,
            not_before,
            self.cooldown,
        )
        return Decision(self.name, True, self._matched_reason(due, not_before), launch)

    def _matched_reason(self, due: datetime, not_before: datetime) -> str:
        parts = ["matched"]
        if self.delay:
            parts.append(f"delayed {format_duration(self.delay)}")
        if not_before != due:
            parts.append(f"outside active hours, scheduled for {_iso(not_before)}")
        return "; ".join(parts)

    def exact_for(self, event_type: str) -> Mapping[str, frozenset[Hashable]]:
        """Values top-level fields must take, with the implicit incoming-only filter."""
        if event_type == "message.added" and not self.condition.names_type:
            return {**self.condition.exact, "type": frozenset({"incoming"})}
        return self.condition.exact


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


class RuleSet:
    """The compiled rules of one file, indexed by event type. Immutable; share freely."""

    def __init__(
        self, rules: Sequence[Rule], content_hash: str = "", filename: str = "rules.yaml"
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.content_hash = content_hash
        self.filename = filename
        index: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for event_type in sorted(rule.event_types):
                index.setdefault(event_type, []).append(rule)
        self._index: dict[str, tuple[Rule, ...]] = {k: tuple(v) for k, v in index.items()}

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, event: Event, now: datetime) -> list[Launch]:
        """Launches for one event at `now` (naive means UTC), in rule order."""
        return [d.launch for d in self.explain(event, now) if d.launch is not None]

    def explain(self, event: Event, now: datetime) -> list[Decision]:
        """One decision per rule listening to the event's type, in file order.

        Every matching rule fires, except that a matching rule with `stop: true`
        hides the event from the rules after it.
        """
        moment = as_utc(now)
        decisions = []
        stopper: str | None = None
        for rule in self._index.get(event.type, ()):
            if stopper is not None:
                reason = f"not considered: rule {stopper!r} matched first and has stop: true"
                decisions.append(Decision(rule.name, False, reason, None))
                continue
            decision = rule.decide(event, moment)
            decisions.append(decision)
            if decision.matched and rule.stop:
                stopper = rule.name
        return decisions

    def event_types(self) -> set[str]:
        """Concrete event types at least one enabled rule listens to."""
        return {t for rule in self.rules if rule.enabled for t in rule.event_types}

    def summary(self) -> dict[str, int]:
        """Enabled rules per event type, in `EVENT_TYPES` order."""
        counts = {t: sum(r.enabled for r in self._index.get(t, ())) for t in EVENT_TYPES}
        return {event_type: count for event_type, count in counts.items() if count}

    def conflicts(self) -> list[str]:
        """Pairs of rules that can start different bots on the same entity for one event.

        amoCRM runs one Salesbot per chat at a time, so the second launch interrupts
        the first. Rules whose top-level conditions exclude each other, and pairs whose
        earlier rule has `stop: true`, cannot both fire and are not reported.
        """
        found: dict[tuple[Rule, Rule], list[str]] = {}
        for event_type, rules in self._index.items():
            enabled = [rule for rule in rules if rule.enabled]
            for i, first in enumerate(enabled):
                for second in enabled[i + 1 :]:
                    if _can_collide(first, second, event_type):
                        found.setdefault((first, second), []).append(event_type)
        return [_conflict_text(first, second, types) for (first, second), types in found.items()]


def _can_collide(first: Rule, second: Rule, event_type: str) -> bool:
    if first.stop or first.entity != second.entity or first.bot_id == second.bot_id:
        return False
    one, other = first.exact_for(event_type), second.exact_for(event_type)
    return not any(one[key].isdisjoint(other[key]) for key in one.keys() & other.keys())


def _conflict_text(first: Rule, second: Rule, event_types: list[str]) -> str:
    return (
        f"rules {first.name!r} (bot {first.bot_id}) and {second.name!r} (bot {second.bot_id}) "
        f"can both start on the same {first.entity} for {', '.join(event_types)}; the second "
        f"bot interrupts the first (make their conditions exclusive or add stop: true "
        f"to {first.name!r})"
    )


# ------------------------------------------------------------------------- loading


def load_rules(text: str, filename: str = "rules.yaml") -> RuleSet:
    """Parse, validate and compile a rules file.

    Raises `RulesError` listing every problem of the file at once, each line as
    `file:line:col: rules[i] (name="…"): path: message`.
    """
    root = _compose(text, filename)
    if root is None:
        message = f"{filename}:1:1: the file is empty; expected version: 1 and rules"
        raise RulesError([message], filename)
    problems: list[_Problem] = []
    converter = _Converter(problems)
    data = converter.convert(root, ())
    rules = _build(data, problems)
    if problems:
        shown = _without_echoes(problems, converter.unreadable)
        raise RulesError(_render(shown, root, data, filename), filename)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return RuleSet(rules, content_hash=digest, filename=filename)


def _without_echoes(problems: list[_Problem], unreadable: list[Loc]) -> list[_Problem]:
    """Drop validation complaints about values YAML could not read (reported already)."""
    return [
        problem
        for problem in problems
        if problem.mark is not None or not any(problem.loc[: len(u)] == u for u in unreadable)
    ]


def load_rules_file(path: str | Path) -> RuleSet:
    """`load_rules` on a file; an unreadable file is a `RulesError` too."""
    return load_rules(_read_text(Path(path)), str(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RulesError([f"{path}: cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise RulesError([f"{path}: not UTF-8 text (byte {exc.start})"], str(path)) from exc


def _build(data: Any, problems: list[_Problem]) -> list[Rule]:
    if not isinstance(data, dict):
        problems.append(
            _Problem((), f"must be a mapping with version and rules, got {_show(data)}")
        )
        return []
    _validate(FileSpec, data, (), problems)
    defaults = DefaultsSpec()
    if "defaults" in data:
        defaults = _validate(DefaultsSpec, data["defaults"], ("defaults",), problems) or defaults
    raw_rules: list[Any] = data["rules"] if isinstance(data.get("rules"), list) else []
    built = [_build_rule(i, raw, defaults, problems) for i, raw in enumerate(raw_rules)]
    _check_unique_names(raw_rules, problems)
    return [rule for rule in built if rule is not None]


def _build_rule(
    index: int, raw: Any, defaults: DefaultsSpec, problems: list[_Problem]
) -> Rule | None:
    loc = ("rules", index)
    spec = _validate(RuleSpec, raw, loc, problems)
    when = raw.get("when", {}) if isinstance(raw, dict) else None
    condition = (
        _WhenCompiler(problems).condition(when, (*loc, "when")) if isinstance(when, dict) else None
    )
    if spec is None or condition is None:
        return None
    _check_entity(spec, loc, problems)
    windows = spec.active_hours if spec.active_hours is not None else defaults.active_hours
    if spec.outside_hours is not None and not windows:
        message = "has no effect without active_hours (on the rule or in defaults)"
        problems.append(_Problem((*loc, "outside_hours"), message))
    return _compile_rule(spec, defaults, condition, windows)


def _compile_rule(
    spec: RuleSpec,
    defaults: DefaultsSpec,
    condition: Condition,
    windows: tuple[WindowSpec, ...] | None,
) -> Rule:
    cooldown = spec.cooldown if spec.cooldown is not None else defaults.cooldown
    delay = spec.delay if spec.delay is not None else defaults.delay
    return Rule(
        name=spec.name,
        on=spec.on,
        event_types=frozenset(t for pattern in spec.on for t in expand_pattern(pattern)),
        bot_id=spec.launch.bot_id,
        entity=spec.launch.entity,
        condition=condition,
        cooldown=cooldown or None,
        delay=delay or timedelta(0),
        active_hours=_active_hours(windows),
        outside_hours=spec.outside_hours or defaults.outside_hours or "schedule",
        enabled=spec.enabled,
        stop=spec.stop,
    )


def _check_entity(spec: RuleSpec, loc: Loc, problems: list[_Problem]) -> None:
    """A rule whose events can never carry its entity would never launch anything."""
    entity = spec.launch.entity
    for pattern in spec.on:
        families = {name.split(".", 1)[0] for name in expand_pattern(pattern)}
        carried = set[str]().union(*(_CARRIED[family] for family in families))
        if entity not in carried:
            message = (
                f"{pattern} events never carry a {entity} id "
                f"(they carry: {', '.join(sorted(carried))})"
            )
            problems.append(_Problem((*loc, "launch", "entity"), message))


def _check_unique_names(raw_rules: list[Any], problems: list[_Problem]) -> None:
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_seen:
            message = f"duplicate rule name {name!r}, already used by rules[{first_seen[name]}]"
            problems.append(_Problem(("rules", index, "name"), message))
        else:
            first_seen[name] = index


# -------------------------------------------------------------------------- reload


@dataclass(frozen=True)
class _LoaderState:
    """Everything a reader may look at, swapped as one reference."""

    current: RuleSet | None = None
    error: str | None = None
    loaded_at: datetime | None = None
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the last file read
    digest: str | None = None  # sha256 of the last file read, good or broken


class RulesLoader:
    """The current rules of a file that may change while the server runs.

    `maybe_reload()` looks at the file at most once per `interval` seconds: a changed
    mtime or size makes it read the file, a changed content hash makes it parse it.
    Good rules are swapped in atomically; broken ones are logged and exposed in
    `error` while the last good rules stay in use. Safe to call from many threads.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _LoaderState()
        self._checked_at = clock()
        #: Called with True when a file loads and False when it is found broken
        #: (`metrics.rules_reloaded`); set by the server, None elsewhere.
        self.on_reload: Callable[[bool], None] | None = None
        with self._lock:
            self._refresh()

    @property
    def current(self) -> RuleSet | None:
        """The rules in use: the last file that loaded, or None if none ever did."""
        return self._state.current

    @property
    def error(self) -> str | None:
        """Why the file on disk is not in use, or None when it is."""
        return self._state.error

    @property
    def loaded_at(self) -> datetime | None:
        """When `current` was loaded (UTC)."""
        return self._state.loaded_at

    @property
    def rule_count(self) -> int:
        return len(self._state.current or ())

    @property
    def content_hash(self) -> str | None:
        current = self._state.current
        return current.content_hash if current else None

    def maybe_reload(self) -> RuleSet | None:
        """The current rules, re-read first if the file changed and `interval` passed."""
        now = self._clock()
        if now - self._checked_at < self.interval:
            return self._state.current
        with self._lock:
            if now - self._checked_at >= self.interval:  # another thread may have been first
                self._checked_at = now
                self._refresh()
        return self._state.current

    def reload(self) -> RuleSet | None:
        """Look at the file now, ignoring the interval (e.g. on SIGHUP)."""
        with self._lock:
            self._checked_at = self._clock()
            self._refresh()
        return self._state.current

    def _refresh(self) -> None:
        state = self._state
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == state.stamp:
                return
            raw = self.path.read_bytes()
        except OSError as exc:
            self._fail(RulesError([f"{self.path}: cannot read: {exc.strerror}"], str(self.path)))
            return
        digest = hashlib.sha256(raw).hexdigest()
        if digest == state.digest:
            self._state = replace(state, stamp=stamp)
            return
        self._parse(raw, stamp, digest)

    def _parse(self, raw: bytes, stamp: tuple[int, int], digest: str) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"{self.path}: not UTF-8 text (byte {exc.start})"
            self._fail(RulesError([message], str(self.path)), stamp, digest)
            return
        try:
            rules = load_rules(text, str(self.path))
        except RulesError as exc:
            self._fail(exc, stamp, digest)
            return
        self._state = _LoaderState(rules, None, datetime.now(UTC), stamp, digest)
        logger.info("rules loaded file=%s rules=%d hash=%s", self.path, len(rules), digest[:12])
        if self.on_reload is not None:
            self.on_reload(True)

    def _fail(
        self, exc: RulesError, stamp: tuple[int, int] | None = None, digest: str | None = None
    ) -> None:
        message = str(exc)
        if message != self._state.error:
            kept = "kept previous rules" if self._state.current else "no rules loaded"
            logger.error(
                "rules reload failed file=%s error=%s (%s)",
                self.path,
                "; ".join(exc.problems),
                kept,
            )
            if self.on_reload is not None:
                self.on_reload(False)
        self._state = replace(self._state, error=message, stamp=stamp, digest=digest)


# ------------------------------------------------------------ payloads and test cases


def decode_payload(body: bytes) -> Payload:
    """A saved webhook body: JSON if it starts with `{`, else amoCRM's form encoding."""
    is_json = body.lstrip().startswith(b"{")
    return decode_body(body, "application/json" if is_json else "application/x-www-form-urlencoded")


def describe_event(event: Event) -> str:
    """One line naming an event: type, where it came from, its entities and change."""
    entities = " ".join(f"{kind}={entity_id}" for kind, entity_id in event.entities.items())
    return f"{event.type} ({event.group}[{event.index}]) {entities or 'no entities'}".rstrip()


def describe_launch(launch: Launch) -> str:
    """One line: rule, bot, entity, earliest start and cooldown of a launch."""
    cooldown = format_duration(launch.cooldown) if launch.cooldown else "none"
    return (
        f"{launch.rule}: bot {launch.bot_id} on {launch.entity} {launch.entity_id}, "
        f"not before {_iso(launch.not_before)}, cooldown {cooldown}"
    )


class ExpectSpec(_Spec):
    """One expected launch of a test case."""

    rule: Annotated[str, PlainValidator(_text)]
    bot_id: BotId
    entity: Annotated[str, PlainValidator(_entity)]
    entity_id: BotId
    not_before: Instant | None = None


class CaseSpec(_Spec):
    """One test case: a payload (file or inline), a moment, the launches expected."""

    name: Annotated[str, PlainValidator(_text)]
    payload: Annotated[str, PlainValidator(_text)] | None = None
    body: Annotated[str, PlainValidator(_text)] | None = None
    at: Instant | None = None
    expect: list[ExpectSpec]

    @model_validator(mode="after")
    def _one_source(self) -> CaseSpec:
        if (self.payload is None) == (self.body is None):
            raise ValueError("set exactly one of 'payload' (a file) and 'body' (inline)")
        return self


class CasesSpec(_Spec):
    """A cases file: optional `rules` path and a list of `cases` (each checked apart)."""

    rules: Annotated[str, PlainValidator(_text)] | None = None
    cases: Annotated[list[Any], PlainValidator(_cases_list)]


def _cases_list(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of cases, got {_show(value)}")
    return value


@dataclass(frozen=True)
class Case:
    """A loaded test case; `body` is the raw payload."""

    name: str
    body: bytes
    at: datetime | None
    expect: tuple[ExpectSpec, ...]


@dataclass(frozen=True)
class CaseFile:
    """A loaded cases file."""

    cases: tuple[Case, ...]
    rules: Path | None  # the rules file the cases name, relative paths resolved


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case; `diff` lines are ` ` both, `-` expected only, `+` actual only."""

    name: str
    passed: bool
    diff: tuple[str, ...] = ()
    error: str | None = None


def load_cases_file(path: str | Path) -> CaseFile:
    """Read a cases file; payload paths are relative to it.

    Raises `RulesError` listing every problem, payload files that cannot be read
    included, each with file:line.
    """
    path = Path(path)
    root = _compose(_read_text(path), str(path))
    if root is None:
        raise RulesError([f"{path}:1:1: the file is empty; expected cases"], str(path))
    problems: list[_Problem] = []
    data = _Converter(problems).convert(root, ())
    spec = _validate(CasesSpec, data, (), problems)
    raw_cases = data.get("cases") if isinstance(data, dict) else None
    cases = [
        _load_case(raw, ("cases", i), path.parent, problems)
        for i, raw in enumerate(raw_cases if isinstance(raw_cases, list) else [])
    ]
    if problems or spec is None:
        raise RulesError(_render(problems, root, data, str(path)), str(path))
    rules = path.parent / spec.rules if spec.rules else None
    return CaseFile(tuple(case for case in cases if case is not None), rules)


def _load_case(raw: Any, loc: Loc, base: Path, problems: list[_Problem]) -> Case | None:
    spec = _validate(CaseSpec, raw, loc, problems)
    if spec is None:
        return None
    if spec.body is not None:
        return Case(spec.name, spec.body.strip().encode("utf-8"), spec.at, tuple(spec.expect))
    try:
        body = (base / str(spec.payload)).read_bytes().strip()
    except OSError as exc:
        message = f"cannot read {spec.payload!r}: {exc.strerror}"
        problems.append(_Problem((*loc, "payload"), message))
        return None
    return Case(spec.name, body, spec.at, tuple(spec.expect))


def run_case(rules: RuleSet, case: Case, now: datetime) -> CaseResult:
    """Decode the case's payload, match every event, compare with the expectation."""
    moment = case.at or as_utc(now)
    try:
        payload = decode_payload(case.body)
    except PayloadError as exc:
        return CaseResult(case.name, False, error=f"payload: {exc}")
    launches = [launch for event in payload.events for launch in rules.match(event, moment)]
    diff = _diff(case.expect, launches)
    return CaseResult(case.name, all(line.startswith(" ") for line in diff), tuple(diff))


def _diff(expected: Sequence[ExpectSpec], actual: Sequence[Launch]) -> list[str]:
    unmatched = list(actual)
    lines = []
    for item in expected:
        found = next((launch for launch in unmatched if _fits(item, launch)), None)
        if found is None:
            lines.append(f"- {_expect_text(item)}")
        else:
            unmatched.remove(found)
            lines.append(f"  {_expect_text(item)}")
    lines.extend(f"+ {_launch_text(launch)}" for launch in unmatched)
    return lines


def _fits(item: ExpectSpec, launch: Launch) -> bool:
    same = (item.rule, item.bot_id, item.entity, item.entity_id) == (
        launch.rule,
        launch.bot_id,
        launch.entity,
        launch.entity_id,
    )
    return same and (item.not_before is None or item.not_before == launch.not_before)


def _expect_text(item: ExpectSpec) -> str:
    text = f"{{rule: {item.rule}, bot_id: {item.bot_id}, entity: {item.entity}, "
    text += f"entity_id: {item.entity_id}"
    return text + (f", not_before: {_iso(item.not_before)}}}" if item.not_before else "}")


def _launch_text(launch: Launch) -> str:
    return (
        f"{{rule: {launch.rule}, bot_id: {launch.bot_id}, entity: {launch.entity}, "
        f"entity_id: {launch.entity_id}, not_before: {_iso(launch.not_before)}}}"
    )
