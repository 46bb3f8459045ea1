"""A glance at a webhook body, without decoding it: how large is it, whose is it?

Decoding a body of 30,000 leads takes about half a second and storing its launches
seconds more, longer than amoCRM waits. The webhook decides from this glance whether
to decode the body at once or to store it raw for a dispatcher to expand
(`store.queue`); for a raw one the account is checked from the glance, and checked
again against the decoded body on expansion. Pure: bytes in, facts out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from automation.errors import PayloadError
from automation.events.form import MAX_FIELDS
from automation.events.values import stored_int
from automation.limits import SUBDOMAIN_LENGTH

#: `account[id]=…` and `account[subdomain]=…`, brackets plain or percent-encoded.
_FORM_FIELD = r"(?:^|&)account(?:\[|%5B){name}(?:\]|%5D)=([^&]*)"
_FORM_ID = re.compile(_FORM_FIELD.format(name="id").encode(), re.IGNORECASE)
_FORM_SUBDOMAIN = re.compile(_FORM_FIELD.format(name="subdomain").encode(), re.IGNORECASE)
#: The top-level `"account": {` of a JSON body (the first one: it comes first or last).
_JSON_ACCOUNT = re.compile(rb'(?<!\\)"account"\s*:\s*\{')


@dataclass(frozen=True, slots=True)
class Glance:
    """What a body shows without decoding: its field count and its account."""

    #: Form fields (`name=value` pairs), or values of a JSON body (`:` separators).
    fields: int
    account_id: int | None
    account_subdomain: str | None


def glance(body: bytes, json_body: bool) -> Glance:
    """Count the fields of a body and find its `account[id]` and `account[subdomain]`
    without decoding it; they are None when a glance cannot find them. Raises
    `PayloadError` for a form body of more fields than the decoder accepts.

    A form field is counted by its `=` (a run of `&` is no field), a JSON value by its
    `:`. Either may over-count (a `:` inside a JSON string counts too): that only ever
    sends a body to the queue that could have been decoded at once. A form body beyond
    the decoder's MAX_FIELDS is refused as the decoder would refuse it.
    """
    if json_body:
        account = _json_account(body)
        return Glance(body.count(b":"), *account)
    fields = body.count(b"=")
    if fields > MAX_FIELDS:
        raise PayloadError(f"body has {fields} form fields; at most {MAX_FIELDS} are accepted")
    return Glance(fields, _form_id(body), _form_subdomain(body))


def require_account(found: Glance, fields: int) -> int:
    """The account id of a body too large to decode at once, or a `PayloadError`
    naming the field that must carry it."""
    if found.account_id is None:
        raise PayloadError(
            f"field 'account[id]': a body of {found.fields} fields (more than {fields}) "
            "is stored before it is decoded, so it must name its account in "
            "account[id] (a number)"
        )
    return found.account_id


def _form_id(body: bytes) -> int | None:
    match = _FORM_ID.search(body)
    if match is None:
        return None
    return _number(unquote_plus(match[1].decode("ascii", "replace")), "account[id]")


def _form_subdomain(body: bytes) -> str | None:
    match = _FORM_SUBDOMAIN.search(body)
    if match is None:
        return None
    return _subdomain(unquote_plus(match[1].decode("utf-8", "replace")))


def _json_account(body: bytes) -> tuple[int | None, str | None]:
    match = _JSON_ACCOUNT.search(body)
    if match is None:
        return None, None
    text = body[match.end() - 1 :].decode("utf-8", "replace")
    try:
        block, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None, None
    if not isinstance(block, dict):
        return None, None
    return _number(block.get("id"), "account[id]"), _subdomain(block.get("subdomain"))


def _number(value: Any, field: str) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        return stored_int(value, field)
    except PayloadError:
        return None


def _subdomain(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > SUBDOMAIN_LENGTH:
        return None
    return value
