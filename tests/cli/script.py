"""The installed `automation` console script, run as a user runs it: a child process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: The console script pip installed beside this interpreter.
SCRIPT = Path(sys.executable).parent / "automation"


def run_script(
    *args: str, env: Mapping[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`automation ARGS` run to its end, stdout and stderr kept as text.

    A failing exit is not raised: the tests assert on `returncode` and the output,
    which is where the script's clean errors (or a traceback) show.
    """
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
