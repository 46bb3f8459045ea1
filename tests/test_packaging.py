"""An installed wheel, not only a checkout, can bring its database up to date.

The migrations live at the top of the repository (`migrations/`, for `alembic upgrade
head`); a wheel carries them inside the package. A `pip install .` that left them out
would start, then fail at its first `automation db upgrade` with Alembic's traceback.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What a wheel is not built from: environments, caches, earlier builds, databases.
UNPACKAGED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.db*")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools leaves a build/ directory in the tree it builds.
    source = tmp_path_factory.mktemp("source") / "project"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*UNPACKAGED))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_holds_every_module_and_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(ROOT).as_posix() for path in (ROOT / "automation").rglob("*.py")}
    expected |= {
        "automation/" + path.relative_to(ROOT).as_posix()
        for path in (ROOT / "migrations").rglob("*")
        if path.suffix in (".py", ".mako")
    }
    assert expected - names == set()


def test_an_installed_wheel_migrates_a_database(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), wheel],
        check=True,
        capture_output=True,
    )
    database = tmp_path / "installed.db"
    script = (
        "import automation.store.database as d\n"
        f"assert d.__file__.startswith({str(site)!r}), d.__file__\n"
        f"d.upgrade('sqlite:///{database}')\n"
        "print(d.head_revision())\n"
    )
    # Run away from the checkout, with the installed copy first on the path.
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(database) as connection:
        (revision,) = connection.execute("select version_num from alembic_version").fetchone()
    assert revision == done.stdout.strip()
