"""The running server's shared state: settings, database and rules, built once.

`create_app` builds one `Runtime` and keeps it in `app.extensions`; request handlers
and CLI commands read it through `runtime()`. Nothing here runs at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.rules.load import RulesLoader, load_rules_file
from automation.store.database import ensure_schema, make_engine, make_session_factory
from automation.store.groupcommit import Committer


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    rules: RulesLoader
    schema_revision: str
    #: Stores the webhooks of a threaded web process, a batch per commit (see
    #: `store.groupcommit`); a process of one request at a time stores its own.
    committer: Committer = field(init=False)

    def __post_init__(self) -> None:
        self.committer = Committer(self.engine)

    @classmethod
    def build(cls, settings: Settings, *, announce: bool = True) -> Runtime:
        """Connect, bring the schema up to date (SQLite) or check it (PostgreSQL),
        and load the rules; raise with a clear message when any of it is wrong.

        `announce=False` loads the rules without the `rules loaded` line, for a worker
        whose server has said it already."""
        engine = make_engine(settings.database_url)
        revision = ensure_schema(engine)
        # No last good rules to fall back on at start: a broken file refuses to start
        # (raising its RulesError) rather than store webhooks that launch nothing.
        load_rules_file(settings.rules_file)
        rules = RulesLoader(settings.rules_file, announce=announce)
        return cls(settings, engine, make_session_factory(engine), rules, revision)

    def init_app(self, app: Flask) -> None:
        app.extensions["automation"] = self


def runtime() -> Runtime:
    """The `Runtime` of the current Flask app."""
    state = current_app.extensions["automation"]
    assert isinstance(state, Runtime)
    return state
