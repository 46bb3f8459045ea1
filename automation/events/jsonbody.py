"""JSON webhook bodies → the same nested dicts and lists as a form. Pure: no I/O.

amoCRM posts forms, but a body of the same shape as JSON (as its docs print it, and
as people replay it) decodes to the same tree. It is held to what a form can hold
(see `form`): no NUL character, no deeper nesting than a form key may have, and
integers within 64 bits, each error naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from automation.errors import PayloadError
from automation.events.form import MAX_DEPTH, body_text, dense_list, join_key, shown_number
from automation.limits import INT64_MAX, INT64_MIN


def parse_json(body: bytes, charset: str | None = None) -> dict[str, Any]:
    """Parse a JSON body with the same shape as the decoded form.

    Held to what a form is (see the module docstring): no NUL, nesting no deeper than
    a form key may, and integers within 64 bits, each error naming the field.
    """
    text = body_text(body, charset, _json_place)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PayloadError(f"JSON body must be an object, got {type(data).__name__}")
    problem = _json_problem(data)
    if problem is not None:
        raise PayloadError(problem)
    return {str(key): _densify(value) for key, value in data.items()}


def _json_problem(data: dict[str, Any]) -> str | None:
    """The first thing in body order a form could not hold, named by its field.

    Walked without recursion: `json.loads` accepts ~1,000 levels, more than the
    recursive `_densify` below and `events._normalise` can walk.
    """
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if len(path) >= MAX_DEPTH:
            return f"JSON body nested deeper than {MAX_DEPTH} levels"
        children: list[tuple[tuple[str, ...], Any]] = []
        for key, item in node.items() if isinstance(node, dict) else enumerate(node):
            where = (*path, str(key))
            problem = _json_item_problem(key, item)
            if problem is not None:
                return f"field {join_key(list(where))!r}: {problem}"
            if isinstance(item, dict | list):
                children.append((where, item))
        stack.extend(reversed(children))
    return None


def _json_item_problem(key: str | int, item: Any) -> str | None:
    """What is wrong with one key and its scalar value, if anything."""
    if isinstance(key, str) and "\x00" in key:
        return "NUL character in the name"
    if isinstance(item, str) and "\x00" in item:
        return "NUL character in the value"
    if type(item) is int and not INT64_MIN <= item <= INT64_MAX:
        return f"{shown_number(str(item))} is out of range"
    return None


def _json_place(body: bytes, offset: int) -> str:
    """`field 'x': value ` for the JSON string value holding byte `offset`, else `body `.

    Decoding with `surrogateescape` turns each bad byte into a lone surrogate that
    `json.loads` keeps, so the string it landed in can be found: the first such string
    in body order holds the first bad byte, the one at `offset`.
    """
    try:
        data = json.loads(body.decode("utf-8", "surrogateescape").lstrip("\ufeff"))
    except (ValueError, RecursionError):
        return "body "
    stack: list[tuple[list[str], Any]] = [([], data)] if isinstance(data, dict | list) else []
    while stack:
        path, node = stack.pop()
        children: list[tuple[list[str], Any]] = []
        for key, item in node.items() if isinstance(node, dict) else enumerate(node):
            where = [*path, str(key)]
            if _escaped(str(key)):
                return "body "  # in a name: nothing readable to name the field by
            if isinstance(item, str) and _escaped(item):
                return f"field {join_key(where)!r}: value "
            if isinstance(item, dict | list):
                children.append((where, item))
        stack.extend(reversed(children))
    return "body "


def _escaped(text: str) -> bool:
    """Whether `text` holds a byte `surrogateescape` could not decode."""
    return any("\udc80" <= char <= "\udcff" for char in text)


def _densify(value: Any) -> Any:
    """Turn `{"0": a, "1": b}` into `[a, b]`, recursively; leave other maps alone."""
    if isinstance(value, list):
        return [_densify(item) for item in value]
    if not isinstance(value, dict):
        return value
    items = {str(key): _densify(item) for key, item in value.items()}
    dense = dense_list(items)
    return items if dense is None else dense
