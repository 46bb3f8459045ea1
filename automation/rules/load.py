"""Rules: which amoCRM events start which Salesbot, on which entity, and when.

Kept in three layers, as Alertmanager keeps its routing tree:

1. **Reading** (`load_rules`, in `build.py`): the YAML is composed into nodes that
   remember their line and column (`yamlfile.py`), turned into plain data, checked
   node by node by strict pydantic models (`spec.py`, `extra="forbid"`), then
   cross-checked (duplicate names, an entity the event type never carries). Every
   problem of a file is reported at once, each as
   `file:line:col: rules[i] (name="…"): path: message`.
2. **Compiling**: conditions become small closures that return `None` when an event
   passes and a reason when it does not (`conditions.py`); rules are indexed by
   concrete event type, so an event only meets the rules that listen to its type.
3. **Matching** (`RuleSet.match`, `RuleSet.explain` in `ruleset.py`): pure functions
   of (event, now), with active hours from `hours.py`.

`RulesLoader`, here, swaps in a changed file and keeps the last good rules when it is
broken. This module is the public face: what other modules use of the rules engine is
imported from here. The `rules test --cases` machinery lives in `cases.py`.
Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from automation.errors import RulesError
from automation.rules.build import load_rules, load_rules_file
from automation.rules.cases import (
    Case,
    CaseFile,
    CaseResult,
    busy_in_payload,
    decode_payload,
    describe_event,
    describe_launch,
    launch_key,
    load_cases_file,
    run_case,
)
from automation.rules.chat import PlannedChats
from automation.rules.conditions import Condition
from automation.rules.hours import ActiveHours, Window
from automation.rules.ruleset import Decision, PlannedLaunch, Rule, RuleSet, check_moment
from automation.rules.spec import (
    RULE_EVENT_TYPES,
    DefaultsSpec,
    FileSpec,
    LaunchSpec,
    RuleSpec,
    WindowSpec,
    expand_pattern,
)
from automation.rules.yamlfile import YamlLoader
from automation.times import as_utc, format_duration, parse_duration, parse_instant

__all__ = [
    "RULE_EVENT_TYPES",
    "ActiveHours",
    "Case",
    "CaseFile",
    "CaseResult",
    "Condition",
    "Decision",
    "DefaultsSpec",
    "FileSpec",
    "LaunchSpec",
    "PlannedChats",
    "PlannedLaunch",
    "Rule",
    "RuleSet",
    "RuleSpec",
    "RulesLoader",
    "Window",
    "WindowSpec",
    "as_utc",
    "busy_in_payload",
    "check_moment",
    "decode_payload",
    "describe_event",
    "describe_launch",
    "expand_pattern",
    "format_duration",
    "launch_key",
    "load_cases_file",
    "load_rules",
    "load_rules_file",
    "parse_duration",
    "parse_instant",
    "run_case",
]

logger = logging.getLogger("automation.rules")

#: The YAML 1.2 loader rules files are read with (`rules._Loader`, for tests that
#: read YAML exactly as the rules engine does).
_Loader = YamlLoader


# -------------------------------------------------------------------------- reload


@dataclass(frozen=True)
class _LoaderState:
    """Everything a reader may look at, swapped as one reference."""

    current: RuleSet | None = None
    error: str | None = None
    loaded_at: datetime | None = None
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the last file read
    digest: str | None = None  # sha256 of the last file read, good or broken
    failure: RulesError | None = None  # why the last file read is not in use


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
        announce: bool = True,
    ) -> None:
        self.path = Path(path)
        #: Say the first load at INFO; False where a server said it already (the
        #: workers of `automation serve`): every later reload is news and is said.
        self.announce = announce
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _LoaderState()
        self._checked_at = clock()
        #: Called with True when a file loads and False when it is found broken
        #: (`metrics.rules_reloaded`); set by the server, None elsewhere.
        self.on_reload: Callable[[bool], None] | None = None
        #: Called with the rules each time a file's content loads and is swapped in
        #: (the server stores the version); its failure is logged, never raised.
        self.on_loaded: Callable[[RuleSet], object] | None = None
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
    def failure(self) -> RulesError | None:
        """The error behind `error`, with its problems (file:line) one by one."""
        return self._state.failure

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
        except Exception as exc:  # a bug in reading must not take the webhooks down
            logger.exception("rules file %s could not be read", self.path)
            message = f"{self.path}: could not be read ({type(exc).__name__}: {exc})"
            self._fail(RulesError([message], str(self.path)), stamp, digest)
            return
        first = self._state.current is None
        self._state = _LoaderState(rules, None, datetime.now(UTC), stamp, digest)
        # A worker of `automation serve` loads what its server has said already: said
        # again, it would come once per worker. Every later reload is news.
        level = logging.DEBUG if first and not self.announce else logging.INFO
        logger.log(
            level, "rules loaded file=%s rules=%d hash=%s", self.path, len(rules), digest[:12]
        )
        warn = logging.WARNING if level == logging.INFO else logging.DEBUG
        for warning in rules.warnings:  # `rules check` shows them too; the server says so once
            logger.log(warn, "rules warning file=%s warning=%s", self.path, warning)
        if self.on_reload is not None:
            self.on_reload(True)
        if self.on_loaded is not None:
            try:
                self.on_loaded(rules)
            except Exception:  # the rules are good; recording them may be retried later
                logger.exception("rules loaded but not recorded file=%s", self.path)

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
        self._state = replace(self._state, error=message, failure=exc, stamp=stamp, digest=digest)
