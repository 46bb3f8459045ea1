"""`automation rules test`: saved payloads, and cases files with expected launches.

A cases file names payloads (files beside it, or inline `body:`), the moment to
match at and the launches each should make; `load_cases_file` reads it with the
same file:line errors as a rules file, and `run_case` matches one case and diffs
expected against actual launches (after the one-bot-per-chat guard within the payload).

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainValidator, model_validator

from automation.errors import PayloadError, RulesError
from automation.events.payloads import Event, Payload, decode_body
from automation.rules.chat import Busy, PlannedChats, launches_after_guard
from automation.rules.ruleset import PlannedLaunch, RuleSet, check_moment
from automation.rules.spec import BotId, Entity, Instant, Spec, Text, validate
from automation.rules.yamlfile import Converter, Loc, Problem, compose, read_text, render, show
from automation.times import as_utc, format_duration, format_instant, parse_instant


def decode_payload(body: bytes, received_at: datetime) -> Payload:
    """A saved webhook body, as if delivered at `received_at`: JSON if it starts with
    `{`, else amoCRM's form encoding."""
    is_json = body.lstrip().startswith(b"{")
    content_type = "application/json" if is_json else "application/x-www-form-urlencoded"
    return decode_body(body, content_type, received_at=received_at)


def describe_event(event: Event) -> str:
    """One line naming an event: type, where it came from, its entities and change."""
    entities = " ".join(f"{kind}={entity_id}" for kind, entity_id in event.entities.items())
    return f"{event.type} ({event.group}[{event.index}]) {entities or 'no entities'}".rstrip()


def describe_launch(launch: PlannedLaunch) -> str:
    """One line: rule, bot, entity, earliest start and cooldown of a launch."""
    cooldown = format_duration(launch.cooldown) if launch.cooldown else "none"
    return (
        f"{launch.rule}: bot {launch.bot_id} on {launch.entity} {launch.entity_id}, "
        f"not before {format_instant(launch.not_before)}, cooldown {cooldown}"
    )


def busy_in_payload(
    rules: RuleSet, payload: Payload, now: datetime, chats: PlannedChats | None = None
) -> dict[Hashable, Busy]:
    """The guard's decisions on one payload's launches, keyed by `launch_key`: against
    each other, and against what `chats` holds from payloads judged before (there is no
    database here: what ran before is unknown)."""
    planned = (chats or PlannedChats()).judge(rules.plan(payload.events, now), now)
    return {launch_key(launch): decision for launch, decision in planned if decision}


def launch_key(launch: PlannedLaunch) -> Hashable:
    """Tells a payload's launches apart: one per rule and event."""
    return (launch.rule, launch.event.group, launch.event.index)


def _case_time(value: Any) -> datetime:
    """A case's `at:`: a time rules can be matched at (see `ruleset.check_moment`)."""
    return check_moment(parse_instant(value))


class ExpectSpec(Spec):
    """One expected launch of a test case."""

    rule: Text
    bot_id: BotId
    entity: Entity
    entity_id: BotId
    not_before: Instant | None = None


class CaseSpec(Spec):
    """One test case: a payload (file or inline), a moment, the launches expected."""

    name: Text
    payload: Text | None = None
    body: Text | None = None
    at: Annotated[datetime, PlainValidator(_case_time)] | None = None
    expect: list[ExpectSpec]

    @model_validator(mode="after")
    def _one_source(self) -> CaseSpec:
        if (self.payload is None) == (self.body is None):
            raise ValueError("set exactly one of 'payload' (a file) and 'body' (inline)")
        return self


def _cases_list(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of cases, got {show(value)}")
    return value


class CasesSpec(Spec):
    """A cases file: optional `rules` path and a list of `cases` (each checked apart)."""

    rules: Text | None = None
    cases: Annotated[list[Any], PlainValidator(_cases_list)]


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
    root = compose(read_text(path), str(path))
    if root is None:
        raise RulesError([f"{path}:1:1: the file is empty; expected cases"], str(path))
    problems: list[Problem] = []
    data = Converter(problems).convert(root, ())
    spec = validate(CasesSpec, data, (), problems)
    raw_cases = data.get("cases") if isinstance(data, dict) else None
    cases = [
        _load_case(raw, ("cases", i), path.parent, problems)
        for i, raw in enumerate(raw_cases if isinstance(raw_cases, list) else [])
    ]
    if problems or spec is None:
        raise RulesError(render(problems, root, data, str(path)), str(path))
    rules = path.parent / spec.rules if spec.rules else None
    return CaseFile(tuple(case for case in cases if case is not None), rules)


def _load_case(raw: Any, loc: Loc, base: Path, problems: list[Problem]) -> Case | None:
    spec = validate(CaseSpec, raw, loc, problems)
    if spec is None:
        return None
    if spec.body is not None:
        return Case(spec.name, spec.body.strip().encode("utf-8"), spec.at, tuple(spec.expect))
    try:
        body = (base / str(spec.payload)).read_bytes().strip()
    except OSError as exc:
        message = f"cannot read {spec.payload!r}: {exc.strerror}"
        problems.append(Problem((*loc, "payload"), message))
        return None
    return Case(spec.name, body, spec.at, tuple(spec.expect))


def run_case(rules: RuleSet, case: Case, now: datetime) -> CaseResult:
    """Decode the case's payload, match every event, compare with the expectation."""
    moment = case.at or as_utc(now)
    try:
        payload = decode_payload(case.body, moment)
    except PayloadError as exc:
        return CaseResult(case.name, False, error=f"payload: {exc}")
    launches = launches_after_guard(rules.plan(payload.events, moment), moment)
    diff = _diff(case.expect, launches)
    return CaseResult(case.name, all(line.startswith(" ") for line in diff), tuple(diff))


def _diff(expected: Sequence[ExpectSpec], actual: Sequence[PlannedLaunch]) -> list[str]:
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


def _fits(item: ExpectSpec, launch: PlannedLaunch) -> bool:
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
    return text + (f", not_before: {format_instant(item.not_before)}}}" if item.not_before else "}")


def _launch_text(launch: PlannedLaunch) -> str:
    return (
        f"{{rule: {launch.rule}, bot_id: {launch.bot_id}, entity: {launch.entity}, "
        f"entity_id: {launch.entity_id}, not_before: {format_instant(launch.not_before)}}}"
    )
