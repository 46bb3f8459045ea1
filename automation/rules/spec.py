"""What a rules file may say: strict pydantic specs and their per-node checks.

Each key of a rules file has a spec field here (`FileSpec`, `DefaultsSpec`,
`RuleSpec`, `LaunchSpec`, `WindowSpec`; the keys a rule shares with `defaults:` are
declared once, in `TimingSpec`); unknown keys are errors (`extra="forbid"`)
and every validator raises `ValueError` with the message the file's error shows.
`validate` turns pydantic's errors into `Problem`s at data paths, with "did you
mean" and "it belongs under …" hints for misspelt and misplaced keys. What needs
the whole file (duplicate names, an entity an event never carries) is checked when
the rules are built (`build.py`); `when:` is compiled in `conditions.py`.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Annotated, Any, TypeVar, get_args

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

from automation.events.fields import FAMILY_FIELDS
from automation.events.payloads import ACTION_VERBS, ENTITY_TYPE_CODES, EVENT_TYPES, FAMILY_ACTIONS
from automation.limits import MAX_ID, RULE_NAME_LENGTH
from automation.rules.hours import parse_clock, parse_clock_end, parse_days, parse_timezone
from automation.rules.yamlfile import Loc, Problem, did_you_mean, is_int, show
from automation.times import parse_duration, parse_instant

#: Event types a rule may name: everything the decoder produces except `unknown`.
RULE_EVENT_TYPES: tuple[str, ...] = tuple(name for name in EVENT_TYPES if name != "unknown")
#: amoCRM's webhook setting names (`status_lead`) → our event types, for "did you mean".
_SETTING_NAMES: Mapping[str, str] = {
    f"{action}_{family}": f"{family}.{ACTION_VERBS[action]}"
    for family, actions in FAMILY_ACTIONS.items()
    for action in actions
}
_OUTSIDE_HOURS = ("schedule", "skip")
_IF_BUSY = ("skip", "wait")


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


# --------------------------------------------------------------- per-node validators


def _quoted(choices: Sequence[str]) -> str:
    return ", ".join(repr(choice) for choice in choices)


def _positive_int(value: Any) -> int:
    """An id: a larger one than the database stores would fail every launch of the rule."""
    if not is_int(value) or int(value) <= 0:
        raise ValueError(f"must be a positive integer, got {show(value)}")
    if int(value) > MAX_ID:
        raise ValueError(f"must be at most {MAX_ID} (a 64-bit integer), got {show(value)}")
    return int(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be non-empty text, got {show(value)}")
    return value


def _rule_name(value: Any) -> str:
    """Names end up in the launch log (at most `RULE_NAME_LENGTH` characters there) and
    in dedupe keys, which `|` separates."""
    name = _text(value)
    if "|" in name:
        raise ValueError(f"must not contain '|', got {show(name)}")
    if len(name) > RULE_NAME_LENGTH:
        raise ValueError(
            f"must be at most {RULE_NAME_LENGTH} characters, got {len(name)}: {show(name)}"
        )
    return name


def _version(value: Any) -> int:
    if value != 1 or isinstance(value, bool):
        raise ValueError(f"must be 1, got {show(value)}")
    return 1


def _entity(value: Any) -> str:
    if isinstance(value, str) and value in ENTITY_TYPE_CODES:
        return value
    choices = list(ENTITY_TYPE_CODES)
    hint = did_you_mean(value, choices)
    raise ValueError(f"must be one of {_quoted(choices)}, got {show(value)}{hint}")


def _outside_hours(value: Any) -> str:
    if isinstance(value, str) and value in _OUTSIDE_HOURS:
        return value
    hint = did_you_mean(value, _OUTSIDE_HOURS)
    raise ValueError(f"must be one of {_quoted(_OUTSIDE_HOURS)}, got {show(value)}{hint}")


def _if_busy(value: Any) -> str:
    if isinstance(value, str) and value in _IF_BUSY:
        return value
    hint = did_you_mean(value, _IF_BUSY)
    raise ValueError(f"must be one of {_quoted(_IF_BUSY)}, got {show(value)}{hint}")


def _event_pattern(value: Any) -> str:
    """An event type (`lead.status_changed`) or a wildcard (`lead.*`, `*`)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be an event type such as 'lead.status_changed', got {value!r}")
    if "*" in value and not expand_pattern(value):
        raise ValueError(f"wildcard {value!r} matches no event type")
    if "*" in value or value in RULE_EVENT_TYPES:
        return value
    suggestion = _SETTING_NAMES.get(value)
    hint = f"; did you mean {suggestion!r}?" if suggestion else did_you_mean(value, EVENT_TYPES)
    raise ValueError(f"unknown event type {value!r}{hint}")


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
        raise ValueError(f"must be a mapping of conditions, got {show(value)}")
    return value


def _rules_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of rules, got {show(value)}")
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
        f"got {show(value)}"
    )


BotId = Annotated[int, PlainValidator(_positive_int)]
Flag = Annotated[bool, PlainValidator(_bool)]
Text = Annotated[str, PlainValidator(_text)]
Entity = Annotated[str, PlainValidator(_entity)]
Duration = Annotated[timedelta, PlainValidator(_duration)]
Instant = Annotated[datetime, PlainValidator(_instant)]
OutsideHours = Annotated[str, PlainValidator(_outside_hours)]
IfBusy = Annotated[str, PlainValidator(_if_busy)]
EventPattern = Annotated[str, PlainValidator(_event_pattern)]


# ------------------------------------------------------------------- pydantic schema


class Spec(BaseModel):
    """Strict base: unknown keys are errors, and specs never change once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowSpec(Spec):
    """One active-hours window: `{timezone, days, from, to}`."""

    timezone: Annotated[str, PlainValidator(parse_timezone)]
    days: Annotated[frozenset[int], PlainValidator(parse_days)] = frozenset(range(7))
    start: Annotated[int, PlainValidator(parse_clock)] = Field(alias="from")
    end: Annotated[int, PlainValidator(parse_clock_end)] = Field(alias="to")

    @model_validator(mode="after")
    def _not_empty(self) -> WindowSpec:
        if self.start == self.end:
            shown = f"{self.start // 60:02d}:{self.start % 60:02d}"
            raise ValueError(f"'from' and 'to' are both {shown!r}, so the window is empty")
        return self


Windows = Annotated[tuple[WindowSpec, ...], BeforeValidator(_windows)]


class LaunchSpec(Spec):
    """`launch:` which bot, on which entity of the event."""

    bot_id: BotId
    entity: Entity


class TimingSpec(Spec):
    """The keys a rule shares with `defaults:`: when and how often it launches."""

    cooldown: Duration | None = None
    delay: Duration | None = None
    active_hours: Windows | None = None
    outside_hours: OutsideHours | None = None
    one_bot_per_chat: Duration | None = None
    if_busy: IfBusy | None = None


class DefaultsSpec(TimingSpec):
    """`defaults:` values every rule inherits unless it sets its own."""


class RuleSpec(TimingSpec):
    """One entry of `rules:` as written."""

    name: Annotated[str, PlainValidator(_rule_name)]
    on: Annotated[tuple[EventPattern, ...], BeforeValidator(_as_list), BeforeValidator(_non_empty)]
    when: Annotated[dict[Any, Any], PlainValidator(_conditions)] = Field(default_factory=dict)
    launch: LaunchSpec
    enabled: Flag = True
    stop: Flag = False


class FileSpec(Spec):
    """The top level of a rules file; `defaults` and each rule are checked apart."""

    version: Annotated[int, PlainValidator(_version)]
    defaults: Any = None
    rules: Annotated[list[Any], PlainValidator(_rules_list)]


# ------------------------------------------------------------- errors → problems

#: Keys of `when:` that are no event field.
_WHEN_KEYS = ("any", "tags", "custom_fields")
#: Keys people put one level off, and where they belong (a condition field beside
#: `when:` rather than under it; a key of the rule inside `launch:`, …).
_MISPLACED: Mapping[tuple[str, str], str] = {
    **{
        (owner, key): "it belongs under 'when'"
        for owner in ("RuleSpec", "LaunchSpec")
        for key in (*sorted(frozenset[str]().union(*FAMILY_FIELDS.values())), *_WHEN_KEYS)
    },
    **{
        ("LaunchSpec", key): "it belongs on the rule, beside 'launch'"
        for key in RuleSpec.model_fields
    },
    **{("RuleSpec", key): "it belongs under 'launch'" for key in LaunchSpec.model_fields},
    **{("FileSpec", key): "it belongs under 'defaults'" for key in DefaultsSpec.model_fields},
}

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], raw: Any, prefix: Loc, problems: list[Problem]) -> M | None:
    """`model.model_validate(raw)`, with every error turned into a `Problem`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_problem(error, model, prefix) for error in exc.errors())
        return None


def _problem(error: ErrorDetails, model: type[BaseModel], prefix: Loc) -> Problem:
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "missing":
        return Problem((*prefix, *loc[:-1]), f"missing required key {loc[-1]!r}")
    if kind in ("extra_forbidden", "invalid_key"):  # invalid_key: a number as a key
        owner = _model_at(model, loc[:-1])
        return Problem(
            (*prefix, *loc[:-1]),
            f"unknown key {loc[-1]!r}{_key_hint(loc[-1], owner)}",
            mark_loc=(*prefix, *loc),
        )
    return Problem((*prefix, *loc), _error_text(error))


def _error_text(error: ErrorDetails) -> str:
    context = error.get("ctx") or {}
    if error["type"] == "value_error" and "error" in context:
        return str(context["error"])
    got = show(error.get("input"))
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
    return did_you_mean(key, [info.alias or name for name, info in owner.model_fields.items()])


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
