"""Log output for operators: one line per webhook and per amoCRM call, text or JSON.

Configured by `create_app` and the CLI, never at import time. Messages carry ids as
`key=value` pairs; JSON lines add the level, logger and time around them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send the `automation` loggers to stderr in the chosen format (idempotent)."""
    logger = logging.getLogger("automation")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_automation", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler._automation = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
