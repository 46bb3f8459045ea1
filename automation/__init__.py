"""amoCRM automation server: webhooks in, Salesbot launches out.

Importing this package has no side effects: nothing connects, reads `rules.yaml` or
configures logging until `create_app()` is called. Nor does it import Flask: the
dispatcher and the amoCRM client import `automation.*` modules without the web layer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from automation.config import SECRET_MIN_LENGTH, UNMASKABLE_LENGTH, Settings, load_settings

if TYPE_CHECKING:
    from flask import Flask, Response
    from werkzeug.exceptions import HTTPException


def create_app(settings: Settings | None = None, *, announce: bool = True) -> Flask:
    """Build the app: settings, logging, database (schema checked), rules, routes.

    Raises `ConfigError`, `SchemaOutdated` or `RulesError` with a message that says
    what to fix, so that a misconfigured server refuses to start. `announce=False` (the
    workers of `automation serve`, whose server said it all once already) leaves out
    the start-up warnings and the `rules loaded` line.
    """
    from flask import Flask
    from werkzeug.exceptions import HTTPException

    from automation.cli import main as cli
    from automation.logs import configure_for
    from automation.web import console, deliveries, health, metrics, webhooks
    from automation.web.api import bp as api_bp
    from automation.web.runtime import Runtime

    settings = settings or load_settings()
    configure_for(settings)
    if announce:
        warn_at_start(settings)
    app = Flask(__name__)
    # One byte over the limit: a chunked body (no Content-Length to check first) is
    # cut by werkzeug at this length without an error, so a body that reads longer
    # than MAX_BODY_BYTES is one the webhook must refuse, not one to store truncated.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    # `//` in a path would get werkzeug's 308 redirect, an HTML page that skips our JSON
    # errors and that amoCRM counts as a failed delivery; a plain JSON 404 says more.
    app.url_map.merge_slashes = False
    Runtime.build(settings, announce=announce).init_app(app)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(deliveries.bp)
    console.init_app(app, settings)
    metrics.init_app(app)
    app.register_error_handler(HTTPException, _json_error)
    for command in cli.commands.values():
        app.cli.add_command(command)
    return app


def warn_at_start(settings: Settings) -> None:
    """No WEBHOOK_SECRET means every webhook gets 503; a short one works, but whoever
    guesses it can start bots; a credential too short to mask shows in logs: say so at
    start, not at the first webhook, and once per server (`automation serve` says it
    before its workers start, and they do not)."""
    for name in settings.unmaskable():
        logging.getLogger("automation").warning(
            "%s is shorter than %d characters: too short to mask safely in logs and "
            "error messages; amoCRM's own credentials are much longer, check the value",
            name,
            UNMASKABLE_LENGTH,
        )
    secret = settings.webhook_secret
    if secret is None:
        logging.getLogger("automation").warning(
            "WEBHOOK_SECRET is not set: every webhook gets 503 until it is; set it and use "
            "it as the last path segment of the webhook URL"
        )
        return
    length = len(secret.get_secret_value())
    if length < SECRET_MIN_LENGTH:
        logging.getLogger("automation").warning(
            "WEBHOOK_SECRET has %d characters: whoever guesses it can post webhooks; use at "
            "least %d random ones, e.g. from python3 -c "
            "'import secrets; print(secrets.token_urlsafe(24))'",
            length,
            SECRET_MIN_LENGTH,
        )


def _json_error(exc: HTTPException) -> tuple[Response, int]:
    """Every HTTP error as JSON with a message, never an HTML page or a traceback."""
    from flask import jsonify

    body: dict[str, Any] = {"error": exc.description or exc.name}
    response = jsonify(body)
    for name, value in exc.get_headers():  # e.g. `Allow` on a 405
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, exc.code or 500
