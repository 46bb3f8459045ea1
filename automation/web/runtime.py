"""The running server's shared state: settings, database and rules, built once.

`create_app` builds one `Runtime` and keeps it in `app.extensions`; request handlers
and CLI commands read it through `runtime()`. Nothing here runs at import time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.rules.load import RuleSet, RulesLoader
from automation.store.database import ensure_schema, make_engine, make_session_factory
from automation.store.groupcommit import Committer
from automation.store.versions import StoredVersion, record_version


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    rules: RulesLoader
    schema_revision: str
    #: Stored rules versions by content hash: filled at load and reload, read per webhook.
    versions: dict[str, StoredVersion] = field(default_factory=dict)
    _recording: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Stores the webhooks of a threaded web process, a batch per commit (see
    #: `store.groupcommit`); a process of one request at a time stores its own.
    committer: Committer = field(init=False)

    def __post_init__(self) -> None:
        self.committer = Committer(self.engine)

    @classmethod
    def build(cls, settings: Settings, *, announce: bool = True) -> Runtime:
        """Connect, bring the schema up to date (SQLite) or check it (PostgreSQL),
        load the rules and store their version; raise with a clear message when any
        of it is wrong.

        `announce=False` loads the rules without the `rules loaded` line, for a worker
        whose server has said it already."""
        engine = make_engine(
            settings.database_url, idle_in_transaction=settings.longest_transaction
        )
        revision = ensure_schema(engine)
        rules = RulesLoader(settings.rules_file, announce=announce)
        if rules.current is None:
            # No last good rules to fall back on at start: a broken file refuses to
            # start rather than store webhooks that launch nothing. The loader's own
            # reading is the one judged, so a file that changes meanwhile cannot leave
            # a worker running without rules.
            engine.dispose()
            assert rules.failure is not None, "a loader without rules says why"
            raise rules.failure
        state = cls(settings, engine, make_session_factory(engine), rules, revision)
        state.rules_version(rules.current)
        rules.on_loaded = state.rules_version
        return state

    def rules_version(self, rules: RuleSet) -> StoredVersion:
        """The stored version of `rules`: recorded once per content, then from memory.

        Recorded when the loader swaps the file in; should that fail (the database
        was down at that moment), the next webhook records it before storing itself.
        """
        known = self.versions.get(rules.content_hash)
        if known is not None:
            return known
        with self._recording:
            known = self.versions.get(rules.content_hash)
            if known is None:
                known = record_version(self.engine, rules, datetime.now(UTC))
                self.versions[rules.content_hash] = known
        return known

    def init_app(self, app: Flask) -> None:
        app.extensions["automation"] = self


def runtime() -> Runtime:
    """The `Runtime` of the current Flask app."""
    state = current_app.extensions["automation"]
    assert isinstance(state, Runtime)
    return state
