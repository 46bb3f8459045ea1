"""Each directory keeps its rule, checked by walking the tree (a new module obeys its
folder's rule without anyone adding it to a list):

- SQL is built only under `automation/store/`. What counts as building SQL: importing
  any of `select`, `insert`, `update`, `delete`, `text` or `func` from `sqlalchemy` or a
  submodule (`sqlalchemy.dialects.postgresql.insert` too), or reaching them as
  attributes of an imported `sqlalchemy` (`sa.select(...)`). Types, sessions, engines
  and `SQLAlchemyError` are not SQL: the web layer and the CLI may hold a session the
  store hands them, and catch the database's errors.
- Flask and werkzeug are imported only under `automation/web/`, in
  `automation/__init__.py` (the app factory) and under `automation/cli/` (the CLI is
  also `flask --app wsgi`).
- The pure packages stay pure: see `tests/test_purity.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "automation"
#: The names that build a statement.
SQL_BUILDERS = frozenset({"select", "insert", "update", "delete", "text", "func"})
#: Where SQL may be built, relative to the package.
SQL_HOME = ("store",)
#: Where Flask and werkzeug may be imported, relative to the package.
WEB_HOMES = ("web", "cli", "__init__.py")
WEB_FRAMEWORK = frozenset({"flask", "werkzeug"})


def modules_outside(*homes: str) -> list[str]:
    """Every module of the package (walked) that is not in one of `homes`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] not in homes:
            found.append(relative.as_posix())
    return found


def sql_built(source: str) -> list[str]:
    """How `source` builds SQL, one entry per way (empty: it does not)."""
    tree = ast.parse(source)
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.split(".")[0] == "sqlalchemy"
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [
                f"from {node.module} import {a.name}" for a in node.names if a.name in SQL_BUILDERS
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in SQL_BUILDERS
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def web_imports(source: str) -> list[str]:
    """The Flask and werkzeug modules `source` imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in WEB_FRAMEWORK]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            found += [module] if module.split(".")[0] in WEB_FRAMEWORK else []
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from sqlalchemy import select, Engine", ["from sqlalchemy import select"]),
        ("def f():\n    from sqlalchemy import func\n", ["from sqlalchemy import func"]),
        (
            "from sqlalchemy.dialects.postgresql import insert",
            ["from sqlalchemy.dialects.postgresql import insert"],
        ),
        ("import sqlalchemy as sa\nsa.update(t)", ["sa.update"]),
        ("import sqlalchemy\nsqlalchemy.text('SELECT 1')", ["sqlalchemy.text"]),
        ("from sqlalchemy.orm import Session\nfrom sqlalchemy.exc import SQLAlchemyError", []),
        ("import sqlalchemy as sa\nsa.Engine", []),
    ],
)
def test_the_sql_scanner_catches_a_planted_statement_and_passes_types(
    source: str, expected: list[str]
) -> None:
    assert sql_built(source) == expected


def test_the_web_scanner_catches_a_planted_flask_import() -> None:
    source = "import werkzeug.exceptions\ndef f():\n    from flask import g\nimport flaskish\n"

    assert web_imports(source) == ["werkzeug.exceptions", "flask"]


def test_the_walk_reaches_every_package_and_leaves_out_the_homes() -> None:
    walked = modules_outside(*SQL_HOME)

    assert {name.split("/")[0] for name in walked} >= {
        "events",
        "rules",
        "web",
        "cli",
        "metrics.py",
    }
    assert not [name for name in walked if name.startswith("store/")]


@pytest.mark.parametrize("name", modules_outside(*SQL_HOME))
def test_no_sql_is_built_outside_store(name: str) -> None:
    assert sql_built((PACKAGE / name).read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("name", modules_outside(*WEB_HOMES))
def test_flask_is_imported_only_in_web_cli_and_the_app_factory(name: str) -> None:
    assert web_imports((PACKAGE / name).read_text(encoding="utf-8")) == []


# --------------------------------------------------------------------------- errors


def exception_classes(source: str, known: frozenset[str]) -> list[str]:
    """Classes in `source` that derive from an exception (a built-in one or one of
    `known`, the names errors.py defines)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if bases & known or any(b.endswith(("Error", "Exception")) for b in bases):
                found.append(node.name)
    return found


def error_names() -> frozenset[str]:
    source = (PACKAGE / "errors.py").read_text(encoding="utf-8")
    return frozenset([*exception_classes(source, frozenset()), "AutomationError"])


def test_the_error_scanner_catches_a_planted_exception_class() -> None:
    source = "class Oops(ConfigError):\n    pass\nclass Fine(BaseModel):\n    pass\n"

    assert exception_classes(source, error_names()) == ["Oops"]


@pytest.mark.parametrize("name", modules_outside("errors.py"))
def test_every_exception_class_lives_in_errors(name: str) -> None:
    source = (PACKAGE / name).read_text(encoding="utf-8")

    assert exception_classes(source, error_names()) == []


def test_each_error_says_its_docstring_when_raised_without_a_message() -> None:
    from automation import errors

    plain = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.AutomationError)
        and cls.__init__ is errors.AutomationError.__init__
    ]

    assert len(plain) >= 10
    for cls in plain:
        assert str(cls()) == (cls.__doc__ or "").strip().splitlines()[0], cls.__name__
