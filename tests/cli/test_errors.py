"""Bad input to the `automation` command gets one clean line naming what was wrong
(the variable or option), never a traceback, never a password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from automation.cli import main
from tests.cli.script import run_script

PASSWORD = "hunter2"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_process(
    tmp_path: Path, rules_file: Path, url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_")}
    env.update(DATABASE_URL=url, RULES_FILE=str(rules_file), WEBHOOK_SECRET="s3cret")
    return run_script(*args, env=env, cwd=tmp_path)


@pytest.mark.parametrize(
    "args",
    [["serve"], ["dispatch", "--once"], ["db", "upgrade"], ["launches", "list"]],
    ids=" ".join,
)
def test_an_unreachable_database_is_one_line_with_the_password_masked(
    tmp_path: Path, rules_file: Path, args: list[str]
) -> None:
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port()}/db"

    done = run_process(tmp_path, rules_file, url, *args)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    error = done.stderr.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("Error: database postgresql://u:***@127.0.0.1:")
    assert "Connection refused" in error[0]


@pytest.mark.parametrize("url", ["mysql://u:hunter2@x/y", "oracle://u:hunter2@x/y"])
def test_an_unsupported_database_is_a_setting_error(url: str) -> None:
    result = CliRunner().invoke(main, ["launches", "list"], env={"DATABASE_URL": url})

    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "DATABASE_URL: expected a SQLite or PostgreSQL URL" in result.output
    assert PASSWORD not in result.output


def test_postgresql_without_psycopg_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pip install .` has no driver; `import psycopg` fails as if it were absent."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port()}/db"

    for args in (["launches", "list"], ["dispatch", "--once"], ["db", "upgrade"]):
        result = CliRunner().invoke(main, args, env={"DATABASE_URL": url})

        assert result.exit_code == 1, args
        assert isinstance(result.exception, SystemExit), args
        assert result.output == (
            "Error: DATABASE_URL is PostgreSQL, which needs psycopg: "
            "pip install 'amocrm-automation[postgres]'\n"
        )


def test_the_missing_driver_message_names_the_distribution() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()

    assert 'name = "amocrm-automation"' in pyproject
    assert 'postgres = ["psycopg' in pyproject


# ---------------------------------------------------------------------------- serve


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1."),
        (
            ["--bind", "127.0.0.1:abc"],
            "Invalid value for '--bind': expected HOST:PORT with a port from 1 to 65535, "
            "got '127.0.0.1:abc'",
        ),
        (
            ["--bind", "127.0.0.1:70000"],
            "Invalid value for '--bind': expected HOST:PORT with a port from 1 to 65535, "
            "got '127.0.0.1:70000'",
        ),
        (
            ["--bind", "8000"],
            "Invalid value for '--bind': expected HOST:PORT with a port from 1 to 65535, "
            "got '8000'",
        ),
    ],
)
def test_serve_refuses_bad_options_before_starting_anything(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args])

    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {message}"


@pytest.mark.parametrize("bind", ["127.0.0.1:8000", "0.0.0.0:80", "[::1]:8000", "host:1"])
def test_serve_takes_host_and_port(bind: str) -> None:
    from automation.cli.server import BindAddress

    assert BindAddress().convert(bind, None, None) == bind
