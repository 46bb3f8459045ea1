"""Property tests of the form decoder: PHP round trip, no crash on any bytes, and
nothing accepted that a database could not store."""

from __future__ import annotations

import codecs
import contextlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode
from urllib.parse import unquote as urllib_unquote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from automation.errors import PayloadError
from automation.events.fields import FAMILY_FIELDS
from automation.events.form import (
    MAX_DEPTH,
    MAX_FIELDS,
    parse_form,
    unquote,
    unquote_all,
)
from automation.events.payloads import Payload, decode_body
from automation.limits import INT64_MAX, INT64_MIN, SUBDOMAIN_LENGTH

#: When the bodies of these tests arrive.
AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

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


#: Keys and values a form may hold: anything but brackets in keys, and no NUL (which is
#: refused, see `test_nul_anywhere_in_a_php_body_is_refused_naming_its_field`).
keys = st.text(st.characters(codec="utf-8", exclude_characters="[]\x00"), min_size=1, max_size=8)
values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


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
    *("%00", "\x00", "\ufeff", "entity_id", "contact_id", "lead_id", "subdomain"),
    *(str(INT64_MAX), str(INT64_MAX + 1), str(INT64_MIN), str(INT64_MIN - 1), "9" * 23),
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
#: Integers at and beyond the 64-bit edges, which `st.integers()` seldom reaches.
edge_integers = st.sampled_from([INT64_MAX, INT64_MAX + 1, INT64_MIN, INT64_MIN - 1, 10**30])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | edge_integers | st.floats() | fragments,
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
        decode_body(body, content_type, received_at=AT)


# ------------------------------------------------- what is accepted can be stored


def leaves(value: Any) -> Iterator[Any]:
    """Every key and every scalar of nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def unstorable(value: Any) -> bool:
    """What no backend stores alike: an integer beyond 64 bits, a string with a NUL."""
    if type(value) is int:
        return not INT64_MIN <= value <= INT64_MAX
    return isinstance(value, str) and "\x00" in value


def assert_storable(payload: Payload) -> None:
    trees = [payload.data, *(event.data for event in payload.events)]
    assert [leaf for tree in trees for leaf in leaves(tree) if unstorable(leaf)] == []
    account = payload.account
    assert account.id is None or (type(account.id) is int and not unstorable(account.id))
    assert account.subdomain is None or len(account.subdomain) <= SUBDOMAIN_LENGTH
    for event in payload.events:
        assert all(type(id_) is int and 0 < id_ <= INT64_MAX for id_ in event.entities.values())
        assert "\x00" not in event.change + event.group


@PROPERTY
@given(bodies, st.sampled_from([FORM, f"{FORM}; charset=UTF-8", JSON]))
@example(b"account[id]=9223372036854775807&leads[add][0][id]=9223372036854775807", FORM)
@example(b"account[id]=1&leads[add][0][price]=9223372036854775808", FORM)
@example(b'{"account": {"id": 1}, "x": {"y": [18446744073709551616]}}', JSON)
@example(b"account[id]=1&leads[status][0][updated_at]=1%00", FORM)
@example(b"\xef\xbb\xbfaccount[id]=1", FORM)
def test_every_accepted_payload_can_be_stored_on_every_backend(
    body: bytes, content_type: str
) -> None:
    """Ints within 64 bits, no NUL, ids positive: SQLite and PostgreSQL store it alike."""
    try:
        payload = decode_body(body, content_type, received_at=AT)
    except PayloadError:
        return
    assert_storable(payload)


@PROPERTY
@given(documents, st.data())
def test_nul_anywhere_in_a_php_body_is_refused_naming_its_field(
    document: dict[str, Any], data: st.DataObject
) -> None:
    assume(depth(document) < MAX_DEPTH)
    pairs = [pair for key, value in document.items() for pair in php_pairs(value, key)]
    index = data.draw(st.integers(0, len(pairs) - 1))
    key, value = pairs[index]
    in_name = data.draw(st.booleans())
    pairs[index] = ("\x00" + key, value) if in_name else (key, value + "\x00")
    named, part = pairs[index][0], "name" if in_name else "value"

    with pytest.raises(PayloadError) as raised:
        parse_form(urlencode(pairs).encode())

    assert str(raised.value) == f"field {named!r}: NUL character in the {part}"


# ------------------------------------------------ the fast form parser and the plain one


def reference_parse_form(body: bytes) -> dict[str, Any]:
    """What `parse_form` must equal: `parse_qsl` plus the plain bracket rebuild.

    A copy of the decoder before it was optimised, kept as the specification.
    """
    text = body.removeprefix(codecs.BOM_UTF8).decode("utf-8")  # only UTF-8 is generated
    pairs = parse_qsl(text.strip(), keep_blank_values=True)
    if len(pairs) > MAX_FIELDS:  # fields: runs of `&` make none
        raise PayloadError(f"body has {len(pairs)} form fields; at most {MAX_FIELDS} are accepted")
    root: dict[str, Any] = {}
    for key, value in pairs:
        if "\x00" in key or "\x00" in value:  # PostgreSQL cannot store a NUL
            part = "name" if "\x00" in key else "value"
            raise PayloadError(f"field {key!r}: NUL character in the {part}")
        reference_insert(root, reference_split_key(key), value, key)
    return {key: reference_densify(value) for key, value in root.items()}


REFERENCE_KEY_RE = re.compile(r"\[([^\[\]]*)\]")


def reference_split_key(key: str) -> list[str]:
    head, bracket, _rest = key.partition("[")
    if not bracket:
        return [key]
    parts = [head]
    position = len(head)
    for match in REFERENCE_KEY_RE.finditer(key, position):
        if match.start() != position:
            break
        parts.append(match.group(1))
        position = match.end()
    if position != len(key) or not head:
        raise PayloadError(f"field {key!r}: malformed bracket key")
    if len(parts) > MAX_DEPTH:
        raise PayloadError(f"field {key!r}: nested deeper than {MAX_DEPTH} levels")
    return parts


def reference_insert(root: dict[str, Any], parts: list[str], value: str, key: str) -> None:
    node = root
    for depth, part in enumerate(parts[:-1]):
        if part == "":
            part = str(len(node))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = parts[0] + "".join(f"[{part}]" for part in parts[1 : depth + 1])
            raise PayloadError(f"field {key!r}: {prefix!r} is both a value and a group")
        node = child
    last = parts[-1] if parts[-1] != "" else str(len(node))
    if isinstance(node.get(last), dict):
        raise PayloadError(f"field {key!r}: {key!r} is both a value and a group")
    node[last] = value


def reference_densify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    items = {str(key): reference_densify(item) for key, item in value.items()}
    keys = sorted(items, key=reference_number)
    if items and all(key == str(index) for index, key in enumerate(keys)):
        return [items[str(index)] for index in range(len(items))]
    return items


def reference_number(key: str) -> tuple[int, str]:
    if key.isascii() and key.isdigit() and len(key) < 10:
        return (int(key), "")
    return (1 << 62, key)


def outcome(parse: Any, body: bytes) -> Any:
    """What `parse` makes of `body`, dict order included, or the error message."""
    try:
        return ordered(parse(body))
    except PayloadError as exc:
        return ("error", str(exc))


def ordered(value: Any) -> Any:
    """Dicts as lists of items, so that `==` also compares their order."""
    if isinstance(value, dict):
        return ("dict", [(key, ordered(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [ordered(item) for item in value])
    return value


#: Raw (already encoded) text that reaches the corners of splitting and unquoting.
RAW_PIECES = (
    *("leads", "status", "custom_fields", "id", "name", "0", "1", "2", "10", "00", "_"),
    *("%5B", "%5b", "%5D", "%5d", "[", "]", "%255B", "%25", "%", "%2", "%Z1", "%zz"),
    *("+", "%2B", "%2b", "%20", " ", "%26", "%3D", "%3d", "=", "%00", "\\", "\\x41"),
    *("Имя", "ä", "%D0%98", "%d0%98", "%D0", "%98", "%E2%82", "%FF", "%C3%A4", "\t"),
)
#: Key parts that decode to bracket-free names; few, so that keys share prefixes, clash,
#: repeat and form dense maps. `""` is PHP's `[]` append.
KEY_NAMES = ("a", "b", "id", "0", "1", "2", "00", "", "Имя", "%D0%98", "x+y", "%2B", "%255B")
KEY_HEADS = ("leads", "a", "b", "0", "%D0%98")
raw_text = st.lists(st.sampled_from(RAW_PIECES) | st.text(max_size=3), max_size=4).map("".join)
openers = st.sampled_from(["%5B"] * 6 + ["%5b", "["])
closers = st.sampled_from(["%5D"] * 6 + ["%5d", "]"])


def bracket_keys_of(heads: st.SearchStrategy[str], names: st.SearchStrategy[str]) -> Any:
    """Keys `head` + `[name]`…, each bracket encoded as PHP does or in another way."""
    parts = st.lists(st.tuples(openers, names, closers).map("".join), max_size=5)
    return st.builds(lambda head, parts: head + "".join(parts), heads, parts)


def join_fields(lead: str, fields: list[str], separators: list[str], trail: str) -> str:
    """A body: `lead`, each field followed by its separator (`&`, `&&`, `;`), `trail`."""
    return lead + "".join(f + sep for f, sep in zip(fields, separators, strict=False)) + trail


#: Mostly well-formed bodies: many keys share prefixes, clash, repeat and append.
clean_keys = bracket_keys_of(st.sampled_from(KEY_HEADS), st.sampled_from(KEY_NAMES))
clean_bodies = st.lists(
    st.tuples(clean_keys, st.just("="), raw_text).map("".join), max_size=16
).map("&".join)
#: Anything goes: odd pieces in keys, fields without `=`, `&&`, `;`, outer whitespace.
raw_keys = bracket_keys_of(raw_text, raw_text | st.sampled_from(KEY_NAMES))
raw_fields = raw_keys | st.tuples(raw_keys, st.sampled_from(["=", "=="]), raw_text).map("".join)
raw_bodies = st.builds(
    join_fields,
    st.sampled_from(["", " ", "&", "\n"]),
    st.lists(raw_fields, max_size=12),
    st.lists(st.sampled_from(["&", "&", "&", "&&", ";"]), min_size=12, max_size=12),
    st.sampled_from(["", " ", "&", "\r\n"]),
)


@PROPERTY
@given(clean_bodies | raw_bodies)
@example("a%5Bb%5D=1&a%5Bb%5D%5Bc%5D=2")
@example("a%5Bb%5D%5Bc%5D=2&a%5Bb%5D=1")
@example("a%5B%5D%5Bx%5D=1&a%5B%5D%5Bx%5D=2&a%5B0%5D%5By%5D=3")
@example("a%255Bb%255D=%255B&a%5Bb%5D=%2B+%25")
@example("a%5B1%5D=x&a%5B0%5D=y&b%5B0%5D=1&b%5B00%5D=2")
@example("a" + "%5Bx%5D" * 31 + "=1&a" + "%5Bx%5D" * 30 + "%5By%5D%5Bz%5D=2")
@example("a%5Bb%5D%5Bc%5D=1&a%5Bb%5Dx%5D=2&a%5Bb%5D%5Bc=3")
@example("a%5Bb%5D=%D0%98%26%3D&c=%E2%82&d=%FF%5B")
@example("a%5Bb%5D=1&a%5Bbcdef%5Bx%5D=2")
@example("a=1" + "&" * MAX_FIELDS)  # one field among many empty ones: allowed
@example("&".join(["a"] * MAX_FIELDS))  # the most fields allowed
@example("&".join(["a"] * (MAX_FIELDS + 1)))  # one too many
@example("\ufeffa%5Bb%5D=1")  # a byte order mark is no part of the first key
@example("a%5Bb%5D=1&a%5Bc%00%5D=2&a%5Bd%5D=%00")  # NUL in a name, then in a value
@example("a%5Bb=1&a%5Bc%5D=%00")  # a malformed key before a NUL
@example("a%5Bc%5D=%00&a%5Bb=1")  # a NUL before a malformed key
@example("a%5B%00%5D=1")  # NUL in a plain-looking key
@example("a\x00%5Bb%5D=1")  # a NUL sent raw
def test_fast_form_parser_equals_parse_qsl_and_the_plain_rebuild(text: str) -> None:
    body = text.encode()

    assert outcome(parse_form, body) == outcome(reference_parse_form, body)


@PROPERTY
@given(documents)
def test_fast_form_parser_equals_the_plain_one_on_php_bodies(document: dict[str, Any]) -> None:
    body = http_build_query(document)

    assert outcome(parse_form, body) == outcome(reference_parse_form, body)


@PROPERTY
@given(raw_text | st.text())
@example("%D0%98%E2%82%FF\\x41\\%41%%41%4")
@example("Имя%D0%98")
def test_unquote_equals_urllib_unquote(text: str) -> None:
    assert unquote(text) == urllib_unquote(text)


@PROPERTY
@given(st.lists(raw_text, max_size=8))
def test_unquote_all_equals_urllib_unquote_of_each(texts: list[str]) -> None:
    texts = [text.replace("&", "") for text in texts]  # form pieces never hold a `&`

    assert unquote_all(texts) == [urllib_unquote(text) for text in texts]


# -------------------------------------- fields we do not know never break decoding

WEBHOOKS = Path(__file__).parents[1] / "fixtures" / "webhooks"
#: Every saved body, real captures and those built from the documentation.
FIXTURE_BODIES = sorted(path.stem for path in WEBHOOKS.glob("*.form"))
#: Names the decoder reads, or the protocol documents: an extra field is none of them.
READ_NAMES = frozenset(
    {
        *frozenset[str]().union(*FAMILY_FIELDS.values()),
        *("note", "type", "element_id", "element_type", "entity_id", "entity_type"),
        *("contact_id", "lead_id", "talk_id", "uid", "data", "accept_result", "status_id"),
    }
)
new_names = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True).filter(
    lambda name: name not in READ_NAMES
)
new_values = st.recursive(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40),
    lambda inner: st.dictionaries(new_names, inner, min_size=1, max_size=3),
    max_leaves=6,
)


def item_prefix(body: bytes) -> str:
    """`leads[status][0]`: the first item of the first event group of a fixture body."""
    data = parse_form(body)
    group = next(key for key in data if key != "account")
    action = next(iter(data[group]))
    return f"{group}[{action}][0]"


@given(st.sampled_from(FIXTURE_BODIES), st.dictionaries(new_names, new_values, max_size=4))
@PROPERTY
def test_unknown_fields_inside_a_known_family_never_change_its_events(
    name: str, extra: dict[str, Any]
) -> None:
    body = (WEBHOOKS / f"{name}.form").read_bytes().strip()
    prefix = item_prefix(body)
    grown = body + b"&" + urlencode(php_pairs(extra, prefix)).encode() if extra else body

    before, after = decode_body(body, received_at=AT), decode_body(grown, received_at=AT)

    assert [(e.type, e.entities, e.change) for e in after.events] == [
        (e.type, e.entities, e.change) for e in before.events
    ]
    assert after.account == before.account
