"""Entry point for gunicorn: `gunicorn wsgi:app`."""

from automation import create_app

app = create_app()
