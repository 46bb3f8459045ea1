"""The launches page's filters: query parameters plus one search box with qualifiers.

`?status=failed&rule=welcome` and `?q=rule:welcome status:failed` mean the same, so
every view is a URL that survives a reload and can be shared. The parameters are
read by the read API's own strict parser; the box adds `lead:123` (an entity of one
kind), `bot:101` and a bare number (any entity with that id).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from werkzeug.datastructures import MultiDict

from automation.errors import BadParameter
from automation.events.payloads import ENTITY_TYPE_CODES
from automation.store.browse import Cursor, LaunchFilter
from automation.web.api import parse_launch_query

#: Parameters of the launches page besides the search box and the cursor.
FILTERS = ("status", "rule", "bot_id", "entity_id", "since", "until")
#: Qualifiers of the search box and the parameter each one sets.
QUALIFIERS = {
    "status": "status",
    "rule": "rule",
    "bot": "bot_id",
    "entity": "entity_id",
    "since": "since",
    "until": "until",
    **{kind: "entity_id" for kind in ENTITY_TYPE_CODES},
}


@dataclass(frozen=True, slots=True)
class View:
    """One view of the launches page, and the parameters that rebuild it."""

    where: LaunchFilter
    cursor: Cursor | None
    #: The filters as given (empty ones dropped), for tab and paging links.
    params: dict[str, str]
    q: str

    def link(self, **changes: str | None) -> dict[str, str]:
        """Query parameters of this view with some changed (None removes one)."""
        merged = {**self.params, "q": self.q} | changes
        return {key: value for key, value in merged.items() if value}


def parse_view(args: MultiDict[str, str], now: datetime) -> View:
    """The view the query string asks for; `BadParameter` names what is wrong."""
    given = {name: args.get(name, "").strip() for name in FILTERS}
    params = {name: value for name, value in given.items() if value}
    q = args.get("q", "").strip()
    from_box, entity_type = parse_search(q)
    for name, value in from_box.items():
        if name in params and params[name] != value:
            raise BadParameter("q", f"{name} is given twice: {params[name]!r} and {value!r}")
    query = parse_launch_query(MultiDict({**params, **from_box}), now)
    cursor_text = args.get("cursor", "").strip()
    try:
        cursor = Cursor.decode(cursor_text) if cursor_text else None
    except ValueError as exc:
        raise BadParameter("cursor", str(exc)) from exc
    return View(LaunchFilter(query, entity_type), cursor, params, q)


def parse_search(text: str) -> tuple[dict[str, str], int | None]:
    """`lead:123 rule:welcome bot:101 status:failed` → parameters, and the entity kind
    when a kind qualifier (`lead:`, `contact:`, …) named one."""
    found: dict[str, str] = {}
    entity_type = None
    for word in text.split():
        key, colon, value = word.partition(":")
        if not colon:
            key, value = "entity", word
        name = QUALIFIERS.get(key.lower())
        if name is None or not value:
            raise BadParameter(
                "q", f"expected qualifier:value with one of {_known()}, got {word!r}"
            )
        if name in found and found[name] != value:
            raise BadParameter("q", f"{key} is given twice: {found[name]!r} and {value!r}")
        found[name] = value
        if key.lower() in ENTITY_TYPE_CODES:
            entity_type = ENTITY_TYPE_CODES[key.lower()]
    return found, entity_type


def without_status(view: View) -> View:
    """The same view with any `status:` taken out of the box: what a tab links from."""
    words = [w for w in view.q.split() if not w.lower().startswith("status:")]
    return replace(view, q=" ".join(words))


def _known() -> str:
    return ", ".join(QUALIFIERS)
