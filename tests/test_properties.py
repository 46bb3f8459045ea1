"""Property tests of the form decoder: PHP round trip, and no crash on any bytes."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from automation.errors import PayloadError
from automation.events import MAX_DEPTH, decode_body, parse_form

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------- a PHP-style encoder


def php_pairs(value: Any, prefix: str) -> list[tuple[str, str]]:
    """`{"b": ["v"]}` under prefix `a` → `[("a[b][0]", "v")]`, as `http_build_query` does."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return [(prefix, value)]
    return [pair for key, item in items for pair in php_pairs(item, f"{prefix}[{key}]")]


def http_build_query(data: dict[str, Any]) -> bytes:
    pairs = [pair for key, value in data.items() for pair in php_pairs(value, key)]
    return urlencode(pairs).encode()


def depth(value: Any) -> int:
    """Containers nested in `value`: `"v"` → 0, `{"a": "v"}` → 1."""
    if isinstance(value, dict):
        return 1 + max(depth(item) for item in value.values())
    if isinstance(value, list):
        return 1 + max(depth(item) for item in value)
    return 0


def is_dense(mapping: dict[str, Any]) -> bool:
    return set(mapping) == {str(index) for index in range(len(mapping))}


keys = st.text(st.characters(codec="utf-8", exclude_characters="[]"), min_size=1, max_size=8)
values = st.text(st.characters(codec="utf-8"), max_size=12)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    maps = st.dictionaries(keys, children, min_size=1, max_size=4).filter(
        lambda mapping: not is_dense(mapping)
    )
    return st.lists(children, min_size=1, max_size=4) | maps


nested = st.recursive(values, containers, max_leaves=24)
documents = st.dictionaries(keys, nested, min_size=1, max_size=5)


@PROPERTY
@given(documents)
@example({"leads": {"status": [{"id": "1", "tags": [{"name": "a b"}]}]}})
@example({"contacts": {"add": [{"linked_leads_id": {"27754620": {"ID": "27754620"}}}]}})
@example({"a": {"1": "x", "2": "y"}, "0": "top-level digits stay keys"})
@example({"a": {"0": "x", "00": "y"}, "b": ["", "&=+%"]})
def test_php_encoded_nested_data_decodes_back_to_itself(document: dict[str, Any]) -> None:
    assume(depth(document) < MAX_DEPTH)

    assert parse_form(http_build_query(document)) == document


# ------------------------------------------------------------- anything else is an error

#: Fragments that reach the decoder's corners: groups, actions, numeric keys, odd digits.
FRAGMENTS = (
    *("account", "leads", "contacts", "companies", "talk", "task", "message", "unsorted"),
    *("add", "update", "status", "delete", "note", "responsible", "catalogs"),
    *("id", "ID", "type", "company", "status_id", "old_status_id", "entity_type"),
    *("element_type", "element_id", "is_read", "updated_at", "_links", "self", "data"),
    *("0", "1", "10", "-1", "--1", "00", "¹", "٣", "", "[", "]", "=", "&", "%", "%ff", "+"),
)
fragments = st.sampled_from(FRAGMENTS) | st.text(max_size=4)
bracket_keys = st.builds(
    lambda head, parts: head + "".join(f"[{part}]" for part in parts),
    fragments,
    st.lists(fragments, max_size=7),
)
form_bodies = st.lists(st.tuples(bracket_keys, fragments), max_size=12).map(
    lambda pairs: "&".join(f"{key}={value}" for key, value in pairs).encode()
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | fragments,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(fragments, children, max_size=4)
    ),
    max_leaves=20,
)
json_bodies = st.dictionaries(fragments, json_values, max_size=4).map(
    lambda document: json.dumps(document).encode()
) | json_values.map(lambda value: json.dumps(value).encode())
bodies = st.binary(max_size=200) | form_bodies | json_bodies


@PROPERTY
@given(bodies, st.sampled_from([FORM, f"{FORM}; charset=UTF-8", JSON]))
@example(b"account[id]=--1", FORM)
@example(b"leads[add][0][id]=--5", FORM)
@example(b"leads[add][0][id]=" + b"1" * 5000, FORM)
@example("a[¹]=x".encode(), FORM)
@example("talk[add][0][entity_type]=¹".encode(), FORM)
@example(b"task[add][0][element_type]=" + b"2" * 5000, FORM)
@example(b'{"a": ' + b"[" * 600 + b"]" * 600 + b"}", JSON)
@example(b'{"account": {"id": 1e400}}', JSON)
@example(b'{"leads": {"add": [[[1.5]]]}}', JSON)
def test_any_body_decodes_or_raises_payload_error(body: bytes, content_type: str) -> None:
    # Anything but `PayloadError` escapes `suppress` and fails the test.
    with contextlib.suppress(PayloadError):
        decode_body(body, content_type)
