"""The strings amoCRM sends, as the ints and bools they mean. Pure: no I/O.

Every value of a form body is a string. Ids, timestamps and a few counts become ints
and `0`/`1` flags become bools, by the key they were sent under; anything that does
not look like its kind is kept as sent. Only what fits 64 bits is an int, as every
amoCRM number does: a bigger one could not be stored as an id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.errors import PayloadError
from automation.events.form import shown_number
from automation.limits import INT64_MAX, INT64_MIN

_NUMERIC_KEYS = frozenset(
    {
        *("id", "ID", "element_type", "price", "rate", "enum", "group_id"),
        *("created_at", "updated_at", "date_create", "last_modified", "date", "complete_till"),
    }
)
_FLAG_KEYS = frozenset({"is_read", "is_in_work", "is_completed"})
_FLAGS = {"1": True, "0": False, "true": True, "false": False}


def normalise(value: Any, key: str = "") -> Any:
    """Convert the strings amoCRM sends into ints and bools where the key says so.

    A value that does not look like its kind (a timestamp that is not digits) is kept
    as sent rather than rejected: the webhook is still stored, and a rule comparing it
    as a number simply does not match. Other scalars (from JSON) are kept as they are.
    """
    if isinstance(value, str):
        return _convert(key, value)
    # `dict` and `list` first: the `Mapping` ABC check is slow, and these are the norm.
    if type(value) is dict or (type(value) is not list and isinstance(value, Mapping)):
        return _normalise_map(value)
    if isinstance(value, list):
        return [normalise(item, key) for item in value]
    return value


def _normalise_map(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """`normalise` of every value, with the strings (most values) converted in line.

    One call per id instead of four, and none for a string under an ordinary key: in
    a bulk webhook this loop runs for every field.
    """
    result: dict[str, Any] = {}
    for key, value in mapping.items():
        if type(value) is not str:
            result[key] = normalise(value, key)
        elif key in _NUMERIC_KEYS or key.endswith("_id"):
            number = parse_int(value)
            result[key] = value if number is None else number
        elif key in _FLAG_KEYS:
            result[key] = _FLAGS.get(value, value)
        else:
            result[key] = value
    return result


def _convert(key: str, text: str) -> Any:
    """A flag → bool, an id or a timestamp → int, by the key it was sent under."""
    if key in _FLAG_KEYS:
        return _FLAGS.get(text, text)
    if key in _NUMERIC_KEYS or key.endswith("_id"):
        return _int_or_text(text)
    return text


def _int_or_text(text: str) -> int | str:
    """Ids are digits, except message and chat ids, which are UUIDs: keep those."""
    number = parse_int(text)
    return text if number is None else number


def parse_int(text: str) -> int | None:
    """`"42"`, `"-7"` → int; anything else (`"--5"`, `"¹"`, 2**63 and more) → None.

    ASCII digits only, with an optional minus: what `-?[0-9]+` matches, without the
    regex call (`isdigit` alone would accept `"¹"` and `"٣"`, which `int` rejects or
    reads differently). Only what fits 64 bits, as every amoCRM number does: a bigger
    one could not be stored as an id (see the module docstring of `payloads`).
    """
    if not (text.isdigit() or (text[1:].isdigit() and text[0] == "-")) or not text.isascii():
        return None
    if len(text) < 19:  # 18 digits, or a minus and 17: always within 64 bits
        return int(text)
    return _parse_long(text)


def _parse_long(text: str) -> int | None:
    """`_parse_int` of 19 characters or more: None beyond 64 bits."""
    try:
        number = int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return None
    return number if INT64_MIN <= number <= INT64_MAX else None


def is_digits(value: Any) -> bool:
    """Whether `value` is a string of ASCII digits: an id, if it is not too big for one."""
    return isinstance(value, str) and value.isdigit() and value.isascii()


def stored_int(value: Any, path: str) -> int | None:
    """A number that is stored (the account id): within 64 bits and never a boolean;
    an error names the field by `path`."""
    if value is None or value == "":
        return None
    number = value if type(value) is int else parse_int(value) if isinstance(value, str) else None
    if number is not None and INT64_MIN <= number <= INT64_MAX:
        return number
    digits = value.removeprefix("-") if isinstance(value, str) else None
    if type(value) is int or is_digits(digits):
        raise PayloadError(f"field {path!r}: {shown_number(str(value))} is out of range")
    raise PayloadError(f"field {path!r}: expected a number, got {value!r}")
