"""What amoCRM's answers mean: the pure helpers of automation.amocrm.answers."""

from __future__ import annotations

import pytest

from automation.amocrm.answers import scrub


@pytest.mark.parametrize(
    ("text", "secret", "shown"),
    [
        # a one-letter secret must not damage the words it happens to be part of
        ("host='mybrand.amocrm.ru'", "y", "host='mybrand.amocrm.ru'"),
        ("client_secret=y&code=abc", "y", "client_secret=***&code=abc"),
        ('{"refresh_token": "def50200ab"}', "def50200ab", '{"refresh_token": "***"}'),
        ("Bearer eyJ0eX.abc-def ended", "eyJ0eX.abc-def", "Bearer *** ended"),
        ("token t0k3n-long.", "t0k3n-long", "token ***."),
        # a longer token that merely starts with the secret is another token
        ("code=abc123456", "abc123", "code=abc123456"),
    ],
)
def test_scrub_masks_whole_occurrences_of_a_secret_only(text: str, secret: str, shown: str) -> None:
    assert scrub(text, [secret]) == shown
