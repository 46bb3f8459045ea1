"""`automation serve`: gunicorn for the web part, plus one dispatcher process.

The dispatcher runs as a child process (`python -m automation dispatch`) so that a
crash of either side is visible and gunicorn's workers stay plain web workers.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

log = logging.getLogger("automation.serving")


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn with our app factory, configured from arguments, not a config file."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from automation import create_app

        return create_app()


def run_server(bind: str, workers: int, *, with_dispatcher: bool) -> None:
    """Run until gunicorn exits (SIGTERM/SIGINT); stop the dispatcher with it."""
    child = None
    if with_dispatcher:
        child = subprocess.Popen([sys.executable, "-m", "automation", "dispatch"])
    try:
        _Gunicorn({"bind": bind, "workers": workers, "timeout": 30, "graceful_timeout": 10}).run()
    finally:
        if child is not None:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
