"""A glance at a webhook body (`events.glance`): its size and its account, undecoded."""

from __future__ import annotations

import json

import pytest

from automation.errors import PayloadError
from automation.events.glance import Glance, glance, require_account


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"account[id]=30112233&account[subdomain]=mybrand&leads[add][0][id]=1", (3, 30112233)),
        (b"leads%5Badd%5D%5B0%5D%5Bid%5D=1&account%5Bid%5D=42&account%5bsubdomain%5d=x", (3, 42)),
        (b"leads[add][0][id]=1&leads[add][0][account_id]=42&&&", (2, None)),
        (b"account[id]=abc&leads[add][0][id]=1", (2, None)),
        (b"account[id]=99999999999999999999999&x=1", (2, None)),
        (b"", (0, None)),
    ],
    ids=["plain", "percent-encoded-last", "items-only", "not-a-number", "too-large", "empty"],
)
def test_a_form_body_is_counted_and_its_account_id_found_without_decoding(
    body: bytes, expected: tuple[int, int | None]
) -> None:
    seen = glance(body, json_body=False)
    assert (seen.fields, seen.account_id) == expected


def test_a_form_body_names_its_subdomain_decoded() -> None:
    seen = glance(b"account[subdomain]=my+brand&account[id]=1", json_body=False)
    assert seen.account_subdomain == "my brand"


def test_a_json_body_gives_its_account_block_and_counts_its_values() -> None:
    leads = [{"id": i} for i in range(5)]
    body = json.dumps({"leads": {"add": leads}, "account": {"id": "7", "subdomain": "s"}})
    seen = glance(body.encode(), json_body=True)
    assert seen == Glance(fields=10, account_id=7, account_subdomain="s")


@pytest.mark.parametrize(
    "body",
    [b'{"leads": {"add": []}}', b'{"account": {"id": "7"', b'{"text": "\\"account\\": {}"}'],
    ids=["no-account", "cut-short", "inside-a-string"],
)
def test_a_json_body_without_a_readable_account_has_none(body: bytes) -> None:
    assert glance(body, json_body=True).account_id is None


def test_a_large_body_without_an_account_id_is_refused_naming_the_field() -> None:
    with pytest.raises(PayloadError, match=r"^field 'account\[id\]': a body of 20000 fields"):
        require_account(Glance(20_000, None, None), 10_000)
    assert require_account(Glance(20_000, 5, None), 10_000) == 5


def test_a_form_body_beyond_the_decoders_field_limit_is_refused_at_a_glance() -> None:
    with pytest.raises(PayloadError, match=r"^body has 200001 form fields; at most 200000"):
        glance(b"a=1&" * 200_001, json_body=False)
