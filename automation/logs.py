"""Log output for operators: one line per webhook and per amoCRM call, text or JSON.

Configured by `create_app` and the CLI, never at import time. Messages carry ids as
`key=value` pairs; JSON lines add the level, logger and time around them, and the
`extra` fields a call passes. With LOG_FORMAT=json every line is JSON: ours, other
libraries' warnings (through the root logger) and gunicorn's own (`GunicornLogger`).

No secret belongs in a log line. Our code logs none; the webhook secret, a path
segment of the webhook URL, is masked in the request lines and error messages of
Flask, werkzeug and gunicorn before any handler sees them: the segment after
`/webhooks/amocrm/` however the path spells it (`%2F`, `//`, any case), and the
secret's value wherever it appears in a logged path, query or header, percent-encoded
or not.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from gunicorn import glogging

if TYPE_CHECKING:
    from automation.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: Loggers that print request paths verbatim: Flask's app logger (named after the
#: package) on a 500, werkzeug's request lines, gunicorn's error and access lines.
PATH_LOGGERS = ("automation", "werkzeug", "gunicorn.error", "gunicorn.access")
#: The webhook route however a client spells it: werkzeug routes `%2F` as `/`, and a
#: doubled slash or another case still names the secret in the logged path.
_WEBHOOK_PATH = re.compile(r"(/webhooks(?:/|%2f)+amocrm(?:/|%2f)+)[^/\s?#\"']+", re.IGNORECASE)
#: A whitespace- or quote-delimited piece of a log line: a path, a query, a header value.
_TOKEN = re.compile(r"[^\s\"']+")
#: Characters a secret's neighbours must not be for it to be a whole occurrence.
_WORD = "A-Za-z0-9_.~-"
#: Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRIBUTES = frozenset(
    [*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName"]
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class MaskWebhookSecret(logging.Filter):
    """Replace the secret segment of `/webhooks/amocrm/<secret>` in a record with `***`,
    and, once `configure_logging` told it the secret, every whole occurrence of its
    value in any token of the line (decoded first: `%73ecret` is the secret too).

    A logger filter, not a handler filter: it rewrites the record itself, so that no
    handler (a file, a log shipper, a test's capture) ever receives the secret.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secret: re.Pattern[str] | None = None
        self.value = ""

    def remember(self, secret: str | None) -> None:
        """Mask this value from now on (None: only the webhook path's segment)."""
        self.value = secret or ""
        self.secret = (
            None if not secret else re.compile(rf"(?<![{_WORD}]){re.escape(secret)}(?![{_WORD}])")
        )

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format: leave it to the handler
            return True
        masked = _WEBHOOK_PATH.sub(r"\1***", message) if "/" in message else message
        # Only a line with the secret or a percent-encoding needs looking into (not
        # the one-per-webhook line, which has neither: this runs on every line).
        if self.secret is not None and (self.value in masked or "%" in masked):
            masked = _TOKEN.sub(self._mask_token, masked)
        if masked != message:
            record.msg, record.args = masked, None
        return True

    def _mask_token(self, match: re.Match[str]) -> str:
        """The token with the secret masked; decoded only when it held the secret."""
        assert self.secret is not None
        token = decoded = match[0]
        for _ in range(3):  # a double-encoded path decodes twice
            if self.secret.search(decoded):
                return self.secret.sub("***", decoded)
            if "%" not in decoded:
                break
            decoded = unquote(decoded)
        return token


MASK_WEBHOOK_SECRET = MaskWebhookSecret()


def configure_logging(
    log_format: str, level: int = logging.INFO, *, webhook_secret: str | None = None
) -> None:
    """Send our loggers (at `level`) and other libraries' warnings to stderr in the
    chosen format, with the webhook secret masked (idempotent)."""
    if webhook_secret is not None:  # a later call without one keeps masking it
        MASK_WEBHOOK_SECRET.remember(webhook_secret)
    formatter = make_formatter(log_format)
    logger = logging.getLogger("automation")
    logger.setLevel(level)
    _install_handler(logger, formatter)
    logger.propagate = False
    _install_handler(logging.getLogger(), formatter)  # the root logger stays at WARNING
    werkzeug = logging.getLogger("werkzeug")
    if werkzeug.level == logging.NOTSET:
        werkzeug.setLevel(logging.INFO)  # its request lines, which our root handler now prints
    for name in PATH_LOGGERS:
        logging.getLogger(name).addFilter(MASK_WEBHOOK_SECRET)
    if isinstance(formatter, JsonFormatter):
        restyle_gunicorn(formatter)
        _log_what_python_prints()


def _log_what_python_prints() -> None:
    """With JSON lines, what Python itself would print as text goes through logging:
    warnings (`py.warnings`) and the traceback of an exception nobody caught."""
    logging.captureWarnings(True)
    log = logging.getLogger("automation")

    def uncaught(kind: Any, value: Any, traceback: Any) -> None:
        log.critical("uncaught %s: %s", kind.__name__, value, exc_info=(kind, value, traceback))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            uncaught(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


def wanted_log_format() -> str:
    """LOG_FORMAT before (or without) the settings: the format this process configured,
    else the variable from the environment or `.env` (gunicorn's master under plain
    gunicorn, a command whose settings failed to load)."""
    formatter = current_formatter()
    if formatter is not None:
        return "json" if isinstance(formatter, JsonFormatter) else "text"
    from dotenv import dotenv_values

    value = os.environ.get("LOG_FORMAT") or dotenv_values(".env").get("LOG_FORMAT") or ""
    return value.strip().lower()


def configure_for(settings: Settings) -> None:
    """`configure_logging` as the settings ask, masking their webhook secret."""
    secret = settings.webhook_secret
    configure_logging(
        settings.log_format, webhook_secret=None if secret is None else secret.get_secret_value()
    )


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT (`text` or `json`)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def _install_handler(logger: logging.Logger, formatter: logging.Formatter) -> None:
    """Replace the stderr handler an earlier call installed, keep everyone else's."""
    for handler in list(logger.handlers):
        if getattr(handler, "_automation", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler._automation = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def restyle_gunicorn(formatter: logging.Formatter) -> None:
    """Give gunicorn's own handlers (error and access log) our formatter."""
    for name in ("gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)


def current_formatter() -> logging.Formatter | None:
    """The formatter `configure_logging` installed in this process, if it ran."""
    for handler in logging.getLogger("automation").handlers:
        if getattr(handler, "_automation", False):
            return handler.formatter
    return None


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger for `automation serve`, and for plain gunicorn through the
    checkout's `gunicorn.conf.py` (or `--logger-class`): the webhook secret masked and,
    with LOG_FORMAT=json, JSON lines like ours from the master and from a worker before
    it loads the app (after that, `configure_logging` restyles the worker's handlers
    under any logger class)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.addFilter(MASK_WEBHOOK_SECRET)
        if wanted_log_format() == "json":
            restyle_gunicorn(current_formatter() or JsonFormatter())
