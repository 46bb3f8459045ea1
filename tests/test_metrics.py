"""Counting imports no web or database code: the amoCRM client and the dispatcher bump
counters without loading Flask, Alembic, SQLAlchemy or the rules engine.

Checked in a fresh interpreter (like tests/cli/test_help.py), because this test process
has long imported everything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "flask",
    "werkzeug",
    "alembic",
    "sqlalchemy",
    "automation.rules",
    "automation.web",
)

PROBE = """
import sys
import {module}
heavy = {heavy!r}
print(" ".join(h for h in heavy if any(n == h or n.startswith(h + ".") for n in sys.modules)))
"""


@pytest.mark.parametrize("module", ["automation.metrics", "automation.amocrm.client"])
def test_counting_loads_neither_flask_nor_the_database_nor_the_rules(module: str) -> None:
    probe = PROBE.format(module=module, heavy=HEAVY)
    answer = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert answer.stdout.strip() == ""


def test_the_probe_sees_a_heavy_import() -> None:
    """The probe above can fail: importing the web layer shows up in its answer."""
    probe = PROBE.format(module="automation.web.metrics", heavy=HEAVY)
    answer = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert {"flask", "sqlalchemy", "automation.web"} <= set(answer.stdout.split())
