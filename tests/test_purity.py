"""The pure modules stay pure: no web framework, database or HTTP client imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "automation"
PURE_PACKAGES = ("events", "rules")
#: Pure modules inside packages that do I/O elsewhere.
PURE_MODULES = ("amocrm/answers.py", "amocrm/subscriptions.py")


def pure_modules() -> list[str]:
    """Every module of the pure packages, found by walking them, plus PURE_MODULES."""
    walked = [
        path.relative_to(PACKAGE).as_posix()
        for package in PURE_PACKAGES
        for path in sorted((PACKAGE / package).rglob("*.py"))
    ]
    return walked + list(PURE_MODULES)


FORBIDDEN = frozenset({"flask", "sqlalchemy", "requests", "werkzeug", "psycopg"})


def imported_modules(source: str) -> set[str]:
    """Every module an `import` or `from … import` names, relative ones as `.name`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_import_scanner_sees_plain_from_and_nested_imports() -> None:
    source = "import flask.json\nfrom sqlalchemy import orm\ndef f():\n    import requests\n"

    assert imported_modules(source) == {"flask.json", "sqlalchemy", "requests"}


@pytest.mark.parametrize("name", pure_modules())
def test_pure_module_imports_no_flask_database_or_http(name: str) -> None:
    path = PACKAGE / name

    modules = imported_modules(path.read_text(encoding="utf-8"))

    assert sorted(m for m in modules if m.split(".")[0] in FORBIDDEN) == []
