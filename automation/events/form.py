"""amoCRM webhook bodies → nested dicts and lists. Pure: no I/O, no Flask, no database.

amoCRM posts `application/x-www-form-urlencoded` bodies built by PHP's
`http_build_query`: every value is a string and the structure lives in bracket keys
(`leads[status][0][id]=…`). `parse_form` splits the form exactly as
`urllib.parse.parse_qsl(text.strip(), keep_blank_values=True)` does, then rebuilds the
nesting (no library knows amoCRM's shape); `jsonbody.parse_json` takes a JSON body of
the same shape to the same tree. Bad input raises `PayloadError`, whose message names the
offending field where there is one. `automation.events` turns the tree into events.

Hand-written rather than `parse_qsl` plus a walk over every key, because a bulk edit of
500 leads is one body of about 10,000 fields and amoCRM waits at most 2 s for the reply:
one split of the whole text, one percent-decoder call for all values and a memo of the
group each still-encoded key prefix names make it several times faster on such bodies.
Faster must not mean different: `tests/events/test_properties.py` checks `parse_form` against
the plain `parse_qsl` implementation, and `unquote` against `urllib.parse.unquote`, on
arbitrary input.

What every decoded tree is held to, whatever the backend later stores it in: no key or
string holds a NUL character (PostgreSQL text cannot store one, SQLite can, so letting it
through made the answer depend on the database), and a JSON integer fits in 64 bits (as
every amoCRM id and timestamp does; the ids among them go into BIGINT columns). A
leading UTF-8 byte order mark is dropped, as a UTF-8 reader should; only UTF-8 is read.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote as urllib_unquote

from automation.errors import PayloadError

#: Deepest bracket nesting we accept; real payloads reach 7 levels.
MAX_DEPTH = 32
#: Most form fields in one body; a 500-lead bulk edit has about 10,000.
MAX_FIELDS = 200_000
_KEY_RE = re.compile(r"\[([^\[\]]*)\]")
#: `[` and `]` as PHP encodes them in keys.
_OPEN, _CLOSE = "%5B", "%5D"
#: Charset names that mean what we read anyway.
_UTF8_NAMES = frozenset({"utf-8", "utf8"})


# ------------------------------------------------------------------ text of the body


def body_text(body: bytes, charset: str | None, place: Callable[[bytes, int], str]) -> str:
    """The body as text: UTF-8, a leading byte order mark dropped.

    On a byte that is not UTF-8 the error says where it is (`place` names the field from
    the body and the offset) and, when the request declared another charset, that only
    UTF-8 is read: amoCRM sends UTF-8, so such a body comes from some other sender.
    """
    skipped = len(codecs.BOM_UTF8) if body.startswith(codecs.BOM_UTF8) else 0
    try:
        return body[skipped:].decode("utf-8") if skipped else body.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = place(body, exc.start + skipped)
        note = charset_note(charset)
        raise PayloadError(f"{where}is not UTF-8 (byte {exc.start + skipped}){note}") from exc


def charset_note(charset: str | None) -> str:
    """`; only UTF-8 is supported, not charset=…` when another charset was declared."""
    if charset is None or charset.lower() in _UTF8_NAMES:
        return ""
    return f"; only UTF-8 is supported, not charset={charset}"


def _form_place(body: bytes, offset: int) -> str:
    """`field 'x': value ` for the form field whose value holds byte `offset`, else `body `."""
    start = body.rfind(b"&", 0, offset) + 1
    end = body.find(b"&", offset)
    field = body[start : len(body) if end < 0 else end]
    key, equals, _ = field.partition(b"=")
    if offset < start + len(key) or not equals:
        return "body "  # in the name itself: nothing readable to name the field by
    name = unquote(key.decode("utf-8", "replace").replace("+", " ")).strip().lstrip("\ufeff")
    return f"field {name!r}: value "


# ----------------------------------------------------------------------- form bodies


def parse_form(body: bytes, charset: str | None = None) -> dict[str, Any]:
    """Parse a PHP-style form body into nested dicts and lists.

    Dense `0..n-1` maps become lists; id-keyed maps (`linked_leads_id[27754620]`)
    stay maps. A later duplicate key replaces an earlier one, as in PHP. The result is
    what `parse_qsl(text.strip(), keep_blank_values=True)` plus the bracket rebuild
    give; `tests/events/test_properties.py` checks that against the plain implementation.
    A key or value holding a NUL character is an error naming the field. `charset` is
    the one the request declared, if any; it only words the error of a non-UTF-8 body.
    """
    text = body_text(body, charset, _form_place)
    keys, values = form_fields(text)
    decoded = unquote("&".join(values))
    # Two scans at C speed: a NUL is either sent raw or decoded from `%00` in a value.
    # (`%00` in a key takes `_FormTree`'s general path, which checks for it.)
    if "\x00" in decoded or "\x00" in text:
        return _checked_tree(keys, values)
    tree = _FormTree()
    tree.fill(keys, _split_decoded(decoded, values))
    return tree.finish()


def _checked_tree(keys: list[str], values: list[str]) -> dict[str, Any]:
    """The tree of a form that holds a NUL somewhere: field by field, the plain way.

    Rare, so without `_FormTree`'s shortcuts, which is what names the first bad field
    exactly as `parse_qsl` and the plain rebuild would meet it.
    """
    root: dict[str, Any] = {}
    for key, value in zip(keys, values, strict=True):
        name = unquote(key)
        _refuse_nul(name, "name", name)
        text = _refuse_nul(name, "value", unquote(value))
        _insert(root, split_key(name), text, name)
    _densify_groups(root)
    return root


def _refuse_nul(name: str, part: str, text: str) -> str:
    """`text`, unless it holds a NUL character: PostgreSQL cannot store one."""
    if "\x00" in text:
        raise PayloadError(f"field {name!r}: NUL character in the {part}")
    return text


def form_fields(text: str) -> tuple[list[str], list[str]]:
    """Split a form into its still percent-encoded keys and values, `+` already a space.

    The same split as `parse_qsl(..., keep_blank_values=True)`: `&` separates fields
    (`;` does not), empty fields are skipped, a field without `=` has an empty value.
    `+` is replaced in the whole text at once, which is what `parse_qsl` does to every
    name and value before unquoting them.
    """
    text = text.strip()
    pairs = text.replace("+", " ").split("&") if text else []
    # Only fields count: a run of `&` is no field, and is skipped like any empty one.
    if len(pairs) > MAX_FIELDS and len(pairs) - pairs.count("") > MAX_FIELDS:
        count = len(pairs) - pairs.count("")
        raise PayloadError(f"body has {count} form fields; at most {MAX_FIELDS} are accepted")
    # A loop, not a list of `partition` tuples: on a 100,000-field body those tuples
    # alone set off hundreds of garbage collections.
    keys: list[str] = []
    values: list[str] = []
    for pair in pairs:
        if pair:
            key, _, value = pair.partition("=")
            keys.append(key)
            values.append(value)
    return keys, values


def unquote_all(texts: list[str]) -> list[str]:
    """`[unquote(text) for text in texts]`, with one decoder call for the whole list.

    Percent-decoding is linear and local: decoding `a&b` gives `unquote(a) & unquote(b)`
    (`&` is ASCII, so no escape and no UTF-8 sequence spans it). The pieces hold no `&`
    of their own, so splitting the decoded whole gives them back unless some `%26`
    decoded to an extra `&`; the piece count tells, and then each is decoded alone.
    """
    if not texts:
        return []
    return _split_decoded(unquote("&".join(texts)), texts)


def _split_decoded(decoded: str, texts: list[str]) -> list[str]:
    """`unquote(text)` for each of `texts`, given `decoded`, `unquote` of them joined."""
    pieces = decoded.split("&")
    if len(pieces) == len(texts):
        return pieces
    return [unquote(text) for text in texts]


def unquote(text: str) -> str:
    """`urllib.parse.unquote(text)`, in C for the ASCII text a PHP encoder writes.

    `%XX` is rewritten as the `\\xXX` escape of the `unicode_escape` codec (after
    doubling every backslash, so no other escape exists), which yields one character
    U+0000..U+00FF per byte; Latin-1 turns those back into the bytes, decoded as UTF-8
    with `replace`, exactly what `unquote` does. A `%` not followed by two hex digits
    makes the codec fail, and `urllib` then keeps it as the literal it is.
    """
    if "%" not in text:
        return text
    if text.isascii():
        escaped = text.replace("\\", "\\\\").replace("%", "\\x").encode("ascii")
        try:
            raw = escaped.decode("unicode_escape")
        except UnicodeDecodeError:
            return urllib_unquote(text)
        return raw.encode("latin-1").decode("utf-8", "replace")
    return urllib_unquote(text)


class _FormTree:
    """The nested dicts of a form, built key by key, densified at the end.

    A bulk webhook repeats the same groups thousands of times
    (`leads%5Bstatus%5D%5B7%5D%5Bname%5D`, `…%5Bprice%5D`), so the group a key's
    still-encoded prefix names is remembered: most fields then cost one `rpartition` and
    one dict lookup instead of decoding, splitting and walking the key. Only "plain"
    keys, written `head%5Bpart%5D…` with no other `%`, `[` or `]` and no empty part, take
    that path; everything else, and every error, goes through `split_key` and
    `_insert`, so the messages stay the same.
    """

    __slots__ = ("_groups", "root")

    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        #: Encoded prefix of a plain key → the group it names.
        self._groups: dict[str, dict[str, Any]] = {}

    def fill(self, keys: list[str], values: list[str]) -> None:
        """Store each value under its still percent-encoded key; a later one wins.

        In line rather than a method per field: this loop runs once per field.
        """
        groups = self._groups
        for key, value in zip(keys, values, strict=True):
            prefix, opened, last = key.rpartition(_OPEN)
            name = last[:-3]
            if opened and last.endswith(_CLOSE) and (name.isidentifier() or _is_plain(name)):
                group = groups.get(prefix)
                if group is None:
                    group = self._group(prefix)
                if group is not None and type(group.get(name)) is not dict:
                    group[name] = value
                    continue
            decoded = unquote(key)
            _refuse_nul(decoded, "name", decoded)
            _insert(self.root, split_key(decoded), value, decoded)

    def _group(self, prefix: str) -> dict[str, Any] | None:
        """The group a plain encoded prefix names, made if new; None when not plain.

        None also when a value sits where a group should, or the key is too deep: the
        caller then takes the general path, which raises the right error. Every level
        is checked on the way up, before any group is made on the way down.
        """
        if prefix.count(_OPEN) > MAX_DEPTH - 2:  # a child would be too deep
            return None
        parent_prefix, opened, last = prefix.rpartition(_OPEN)
        name = last[:-3] if opened else last
        if not (name.isidentifier() or _is_plain(name)):
            return None
        if not opened:
            parent: dict[str, Any] | None = self.root
        elif last.endswith(_CLOSE):
            parent = self._groups.get(parent_prefix)
            if parent is None:
                parent = self._group(parent_prefix)
        else:
            return None
        if parent is None:
            return None
        group = parent.get(name)
        if group is None:
            group = parent[name] = {}
        elif type(group) is not dict:
            return None
        self._groups[prefix] = group
        return group

    def finish(self) -> dict[str, Any]:
        """Turn dense groups into lists and return the root, which stays a map."""
        _densify_groups(self.root)
        return self.root


def _densify_groups(group: dict[str, Any]) -> None:
    """Replace every dense group inside `group` by a list, children first, in place.

    In place, as the tree is our own: no copy of every map as `_densify` makes. Keys
    nest at most `MAX_DEPTH` deep, so the recursion is shallow, and only values are
    replaced during the loop, never keys added or removed.
    """
    for name, child in group.items():
        if type(child) is dict:
            _densify_groups(child)
            items = dense_list(child)
            if items is not None:
                group[name] = items


def _is_plain(part: str) -> bool:
    """Whether a key part is non-empty and needs no decoding or bracket parsing.

    `part.isidentifier()` implies it and is quicker, so hot loops try that first.
    """
    return bool(part) and "%" not in part and "[" not in part and "]" not in part


def split_key(key: str) -> list[str]:
    """`leads[status][0][id]` → `["leads", "status", "0", "id"]`."""
    head, bracket, rest = key.partition("[")
    if not bracket:
        return [key]
    if head and rest.endswith("]"):
        # Fast path: `head[a][b]` is `head[` + `a][b` + `]`, valid when the only
        # brackets inside are the `][` separators.
        parts = rest[:-1].split("][")
        inner = len(parts) - 1
        if rest.count("[") == inner and rest.count("]") == inner + 1 and inner < MAX_DEPTH - 1:
            return [head, *parts]
    return _split_key_slowly(key, head)


def _split_key_slowly(key: str, head: str) -> list[str]:
    """`split_key` for keys off the fast path; names what is wrong with a bad key."""
    parts = [head]
    position = len(head)
    for match in _KEY_RE.finditer(key, position):
        if match.start() != position:
            break
        parts.append(match.group(1))
        position = match.end()
    if position != len(key) or not head:
        raise PayloadError(f"field {key!r}: malformed bracket key")
    if len(parts) > MAX_DEPTH:
        raise PayloadError(f"field {key!r}: nested deeper than {MAX_DEPTH} levels")
    return parts


def _insert(root: dict[str, Any], parts: list[str], value: str, key: str) -> None:
    """Store `value` at `parts`, making the groups on the way."""
    node = root
    for depth, part in enumerate(parts[:-1]):
        if part == "":
            part = str(len(node))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = join_key(parts[: depth + 1])
            raise PayloadError(f"field {key!r}: {prefix!r} is both a value and a group")
        node = child
    last = parts[-1] if parts[-1] != "" else str(len(node))
    if isinstance(node.get(last), dict):
        raise PayloadError(f"field {key!r}: {key!r} is both a value and a group")
    node[last] = value


def join_key(parts: list[str]) -> str:
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


def shown_number(digits: str) -> str:
    """A number for an error message: a 5,000-digit one is shortened, with its length."""
    if len(digits) <= 30:
        return digits
    return f"{digits[:12]}…{digits[-4:]} ({len(digits)} characters)"


def dense_list(group: dict[str, Any]) -> list[Any] | None:
    """`{"0": a, "1": b}` (in any order) → `[a, b]`; None unless keys are `0..n-1`."""
    if "0" not in group:
        return None
    indexes = list(map(str, range(len(group))))
    if list(group) == indexes:
        return list(group.values())
    if group.keys() == set(indexes):
        return [group[index] for index in indexes]
    return None
