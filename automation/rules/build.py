"""Building a `RuleSet` from a rules file's text: read, check, cross-check, compile.

The YAML is composed into nodes that remember their line and column (`yamlfile.py`),
turned into plain data, checked node by node by the strict pydantic specs
(`spec.py`), then cross-checked here (duplicate names, an entity the event type never
carries, an option that has no effect). Every problem of a file is reported at once,
each as `file:line:col: rules[i] (name="…"): path: message`. What passes is compiled:
conditions into closures (`conditions.py`), active hours into `ActiveHours`.

Other modules import this through `load.py`, the rules engine's public face.
Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from automation.errors import RulesError
from automation.events.payloads import ENTITY_TYPE_CODES
from automation.rules.chat import DEFAULT_WINDOW, IF_BUSY
from automation.rules.conditions import Condition, compile_condition
from automation.rules.fieldcheck import check_fields
from automation.rules.hours import ActiveHours, Window
from automation.rules.ruleset import Rule, RuleSet
from automation.rules.spec import (
    DefaultsSpec,
    FileSpec,
    RuleSpec,
    WindowSpec,
    expand_pattern,
    validate,
)
from automation.rules.yamlfile import Converter, Loc, Problem, compose, read_text, render, show

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


def load_rules(text: str, filename: str = "rules.yaml") -> RuleSet:
    """Parse, validate and compile a rules file.

    Raises `RulesError` listing every problem of the file at once, each line as
    `file:line:col: rules[i] (name="…"): path: message`.
    """
    root = compose(text, filename)
    if root is None:
        message = f"{filename}:1:1: the file is empty; expected version: 1 and rules"
        raise RulesError([message], filename)
    problems: list[Problem] = []
    notices: list[Problem] = []  # warnings: the file loads, `rules check` shows them
    converter = Converter(problems)
    data = converter.convert(root, ())
    rules = _build(data, (problems, notices))
    if problems:
        shown = converter.without_echoes(problems)
        raise RulesError(render(shown, root, data, filename), filename)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    warnings = render(notices, root, data, filename)
    return RuleSet(rules, content_hash=digest, filename=filename, warnings=warnings, source=text)


def load_rules_file(path: str | Path) -> RuleSet:
    """`load_rules` on a file; an unreadable file is a `RulesError` too."""
    return load_rules(read_text(Path(path)), str(path))


def _build(data: Any, found: tuple[list[Problem], list[Problem]]) -> list[Rule]:
    """The rules of a file; errors go to `found[0]`, warnings to `found[1]`."""
    problems = found[0]
    if not isinstance(data, dict):
        problems.append(Problem((), f"must be a mapping with version and rules, got {show(data)}"))
        return []
    validate(FileSpec, data, (), problems)
    defaults = DefaultsSpec()
    if "defaults" in data:
        defaults = validate(DefaultsSpec, data["defaults"], ("defaults",), problems) or defaults
    raw_rules: list[Any] = data["rules"] if isinstance(data.get("rules"), list) else []
    built = [_build_rule(i, raw, defaults, found) for i, raw in enumerate(raw_rules)]
    _check_unique_names(raw_rules, problems)
    return [rule for rule in built if rule is not None]


def _build_rule(
    index: int, raw: Any, defaults: DefaultsSpec, found: tuple[list[Problem], list[Problem]]
) -> Rule | None:
    loc, problems = ("rules", index), found[0]
    spec = validate(RuleSpec, raw, loc, problems)
    when = raw.get("when", {}) if isinstance(raw, dict) else None
    condition = (
        compile_condition(when, (*loc, "when"), problems) if isinstance(when, dict) else None
    )
    if spec is None or condition is None:
        return None
    _check_entity(spec, loc, problems)
    event_types = {t for pattern in spec.on for t in expand_pattern(pattern)}
    check_fields(spec.when, event_types, ", ".join(spec.on), (*loc, "when"), found)
    windows = spec.active_hours if spec.active_hours is not None else defaults.active_hours
    if spec.outside_hours is not None and not windows:
        message = "has no effect without active_hours (on the rule or in defaults)"
        problems.append(Problem((*loc, "outside_hours"), message))
    guard = _first(spec.one_bot_per_chat, defaults.one_bot_per_chat, DEFAULT_WINDOW)
    if spec.if_busy is not None and not guard:
        message = "has no effect with one_bot_per_chat: 0s (the guard is off)"
        problems.append(Problem((*loc, "if_busy"), message))
    rule = _compile_rule(spec, defaults, condition, windows)
    return replace(rule, when=_one_line(when or {}))


def _one_line(when: Mapping[Any, Any]) -> str:
    """`when:` as one line of JSON-like text; `-` for a rule without conditions."""
    return json.dumps(when, ensure_ascii=False, default=str)[1:-1] or "-"


def _compile_rule(
    spec: RuleSpec,
    defaults: DefaultsSpec,
    condition: Condition,
    windows: tuple[WindowSpec, ...] | None,
) -> Rule:
    cooldown = spec.cooldown if spec.cooldown is not None else defaults.cooldown
    delay = spec.delay if spec.delay is not None else defaults.delay
    guard = _first(spec.one_bot_per_chat, defaults.one_bot_per_chat, DEFAULT_WINDOW)
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
        one_bot_per_chat=guard or None,
        if_busy=spec.if_busy or defaults.if_busy or IF_BUSY[0],
        enabled=spec.enabled,
        stop=spec.stop,
    )


def _first(*values: timedelta | None) -> timedelta | None:
    return next((value for value in values if value is not None), None)


def _check_entity(spec: RuleSpec, loc: Loc, problems: list[Problem]) -> None:
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
            problems.append(Problem((*loc, "launch", "entity"), message))


def _check_unique_names(raw_rules: list[Any], problems: list[Problem]) -> None:
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_seen:
            message = f"duplicate rule name {name!r}, already used by rules[{first_seen[name]}]"
            problems.append(Problem(("rules", index, "name"), message))
        else:
            first_seen[name] = index


def _active_hours(windows: tuple[WindowSpec, ...] | None) -> ActiveHours | None:
    if not windows:
        return None
    return ActiveHours(tuple(Window(ZoneInfo(w.timezone), w.days, w.start, w.end) for w in windows))
