"""amoCRM automation server: webhooks in, Salesbot launches out.

Importing this package has no side effects: nothing connects, reads `rules.yaml` or
configures logging until `create_app()` is called.
"""

from __future__ import annotations

from flask import Flask

from automation.config import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app from `settings` (default: the environment)."""
    app = Flask(__name__)
    app.config["SETTINGS"] = settings or load_settings()
    return app
