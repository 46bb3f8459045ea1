"""`automation --help` stays quick: it loads no database, app or HTTP code.

That is why the CLI takes the launch states from `store.states` (plain enums) instead of
`models` (a test in tests/cli/test_launches.py keeps the two lists equal).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "sqlalchemy",
    "alembic",
    "requests",
    "automation.store.models",
    "automation.store.database",
)

PROBE = """
import sys
from click.testing import CliRunner
from automation.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
assert result.exit_code == 0, result.output
print(" ".join(sorted(name for name in {heavy!r} if name in sys.modules)))
"""


@pytest.mark.parametrize(
    "arguments",
    [
        ["--help"],
        ["launches", "--help"],
        ["launches", "list", "--help"],
        ["serve", "--help"],
        ["db", "upgrade", "--help"],
    ],
)
def test_help_imports_no_database_or_http_code(arguments: list[str]) -> None:
    probe = PROBE.format(heavy=HEAVY)
    answer = subprocess.run(
        [sys.executable, "-c", probe, *arguments], capture_output=True, text=True, check=True
    )
    assert answer.stdout.strip() == ""
