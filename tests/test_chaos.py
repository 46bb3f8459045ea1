"""The short chaos run (bench/chaos.py --short) as a regular test.

It kills and pauses real server and dispatcher processes under load, sends hostile
bodies, and checks what reached a fake amoCRM against what the server acknowledged:
no acknowledged webhook lost, no task received twice, every `sent` launch received
once, at most AMOCRM_MAX_RPS calls in any second. On SQLite, and on PostgreSQL as well
when TEST_DATABASE_URL is set (the run reads it). About a minute; its figures are in
its output, printed here when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_short_chaos_run_finds_no_violation() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short"],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    assert done.returncode == 0, f"bench/chaos.py --short:\n{done.stdout}\n{done.stderr}"
    assert "PASSED" in done.stdout
