"""Shared pytest fixtures.

The process environment must not leak into tests: a developer's `AMOCRM_ACCESS_TOKEN`
or `DATABASE_URL` would change what the code under test does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _name in list(os.environ):
    if _name.startswith("AMOCRM_") or _name in {
        "DATABASE_URL",
        "RULES_FILE",
        "WEBHOOK_SECRET",
        "DRY_RUN",
        "ADMIN_TOKEN",
        "MAX_BODY_BYTES",
        "LOG_FORMAT",
    }:
        del os.environ[_name]

FIXTURES = Path(__file__).parent / "fixtures"
WEBHOOKS = FIXTURES / "webhooks"


@pytest.fixture
def webhook_body() -> object:
    """Read a webhook fixture by setting name: `webhook_body("status_lead")`."""

    def read(name: str) -> bytes:
        return (WEBHOOKS / f"{name}.form").read_bytes().strip()

    return read
