"""Commands other than serve, dispatch and db upgrade never create a database, and the
ones that only read never migrate one (issue: an operator in the wrong directory got
an empty `automation.db` and "no launches match", and believed the launches gone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from automation.cli import main
from automation.store.database import upgrade

READERS = [
    ["launches", "list"],
    ["launches", "show", "5"],
    ["rules", "test", "--delivery", "1"],
    ["replay", "--since", "1d", "--dry-run"],
    ["webhooks", "status", "https://example.org/webhooks/amocrm/s3cretsecret/"],
]
WRITERS = [
    ["launches", "retry", "--failed"],
    ["replay", "--since", "1d"],
    ["prune", "--older-than", "30d"],
]


def run(tmp_path: Path, args: list[str], url: str | None = None) -> Result:
    rules = Path(__file__).parents[2] / "rules.yaml"
    env = {"RULES_FILE": str(rules), "WEBHOOK_SECRET": "s3cretsecret"}
    if url is not None:
        env["DATABASE_URL"] = url
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return CliRunner().invoke(main, args, env=env)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("args", READERS + WRITERS, ids=" ".join)
def test_a_command_run_where_there_is_no_database_says_so_and_creates_none(
    tmp_path: Path, args: list[str]
) -> None:
    result = run(tmp_path, args)

    expected = tmp_path.resolve() / "automation.db"
    assert result.exit_code == 1, result.output
    assert (
        f"no database at {expected} (DATABASE_URL=sqlite:///automation.db); run from the "
        "directory that holds it or set DATABASE_URL"
    ) in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", READERS[:3], ids=" ".join)
def test_a_read_only_command_on_an_old_schema_says_to_upgrade_and_migrates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    path = tmp_path / "old.db"
    upgrade(f"sqlite:///{path}", "0002")

    result = run(tmp_path, args, f"sqlite:///{path}")

    assert result.exit_code == 1, result.output
    assert "the code needs" in result.output
    assert "run `automation db upgrade`" in result.output
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert revision == "0002"


def test_config_show_prints_the_database_file_a_relative_url_resolves_to(tmp_path: Path) -> None:
    result = run(tmp_path, ["config", "show"])

    assert result.exit_code == 0, result.output
    assert f"# database file: {tmp_path.resolve() / 'automation.db'} (not there)" in result.output
