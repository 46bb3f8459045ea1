"""The schema changes only through Alembic: models and migrations must agree."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from automation.errors import SchemaOutdated
from automation.store.database import (
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    make_engine,
    upgrade,
)
from automation.store.models import Base


def _differences(url: str) -> list[object]:
    engine = make_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return list(diff)


def test_migrations_have_a_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_models_and_migrations_agree(database_url: str) -> None:
    assert _differences(database_url) == []


def test_downgrade_and_upgrade_round_trip(database_url: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(database_url), "base")
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    upgrade(database_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()
    assert _differences(database_url) == []


def test_sqlite_schema_is_brought_up_to_date_at_start(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    engine = make_engine(url)
    assert ensure_schema(engine) == head_revision()
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_postgresql_on_an_old_schema_refuses_to_start(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite upgrades itself")
    from alembic import command

    command.downgrade(alembic_config(database_url), "base")
    engine = make_engine(database_url)
    with pytest.raises(SchemaOutdated, match=r"run `automation db upgrade`"):
        ensure_schema(engine)
    engine.dispose()
    upgrade(database_url)


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: object) -> None:
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path}/wal.db")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    engine.dispose()


def test_automation_db_upgrade_migrates_the_configured_database(tmp_path: object) -> None:
    from click.testing import CliRunner

    from automation.cli import main

    url = f"sqlite:///{tmp_path}/cli.db"
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"DATABASE_URL": url})

    assert result.exit_code == 0, result.output
    assert f"database at revision head: {url}" in result.stdout
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_plain_alembic_upgrade_head_works_from_the_repository(tmp_path: object) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{tmp_path}/alembic.db"
    root = Path(__file__).resolve().parents[2]
    alembic = str(Path(sys.executable).parent / "alembic")
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([alembic, "upgrade", "head"], cwd=root, env=env, check=True, capture_output=True)

    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_0007_backfills_the_entities_of_old_deliveries_and_downgrades(
    database_url: str, webhook_body: Callable[[str], bytes]
) -> None:
    from alembic import command
    from sqlalchemy import text

    config = alembic_config(database_url)
    command.downgrade(config, "0006")
    engine = make_engine(database_url)
    old = [webhook_body("status_lead"), webhook_body("add_talk"), b"not a webhook at all"]
    with engine.begin() as connection:
        for number, body in enumerate(old, 1):
            connection.execute(
                text(
                    "INSERT INTO deliveries (id, received_at, content_type, body, event_count,"
                    " launch_count, duplicate_count, status) VALUES (:id, :at,"
                    " 'application/x-www-form-urlencoded', :body, 1, 0, 0, 'accepted')"
                ),
                {"id": number, "at": datetime(2026, 11, 1), "body": body},
            )
    upgrade(database_url)
    with engine.connect() as connection:
        entities = connection.execute(
            text(
                "SELECT delivery_id, entity_type, entity_id FROM delivery_entities"
                " ORDER BY delivery_id, entity_type"
            )
        ).all()
        versions = connection.execute(text("SELECT rules_version_id FROM deliveries")).all()
    assert [tuple(row) for row in entities] == [
        (1, "lead", 27754599),
        (2, "chat_contact", 93589657),
        (2, "lead", 27754620),
    ]
    assert [row[0] for row in versions] == [None, None, None]  # nothing recorded them

    command.downgrade(config, "0006")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM deliveries")).scalar() == 3
        columns = connection.execute(text("SELECT * FROM deliveries")).keys()
    assert "rules_version_id" not in columns
    upgrade(database_url)
    engine.dispose()
    assert _differences(database_url) == []
