"""WEBHOOK_SECRET is checked at start: a URL path segment, and long enough to guess hard."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from automation.config import Settings, load_settings
from automation.errors import ConfigError


@pytest.mark.parametrize("secret", ["with/slash", "with space", "q?x", "frag#x", "ünïcode"])
def test_a_secret_that_is_not_a_path_segment_refuses_to_start(secret: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"WEBHOOK_SECRET": secret})

    message = str(raised.value)
    assert "WEBHOOK_SECRET: expected letters, digits and . _ ~ - only" in message
    assert "got (hidden)" in message
    assert secret not in message


def test_every_unreserved_character_is_accepted() -> None:
    secret = "AZaz09._~-" * 2
    settings = load_settings({"WEBHOOK_SECRET": secret})

    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == secret


@pytest.mark.parametrize(("secret", "warned"), [("change-me", True), ("x" * 16, False)])
def test_a_short_secret_is_accepted_with_a_warning(
    make_settings: Callable[..., Settings],
    make_app: Callable[[Settings], Any],
    secret: str,
    warned: bool,
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("automation")  # it does not propagate: no caplog
    logger.addHandler(handler)
    try:
        make_app(make_settings(webhook_secret=secret))
    finally:
        logger.removeHandler(handler)

    warnings = [r.getMessage() for r in records if "WEBHOOK_SECRET" in r.getMessage()]
    assert bool(warnings) is warned
    assert all(secret not in message for message in warnings)
    if warned:
        assert warnings[0].startswith(f"WEBHOOK_SECRET has {len(secret)} characters")
