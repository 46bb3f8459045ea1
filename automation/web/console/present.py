"""How the console shows values: times, counts, entity links and the sparkline.

Jinja filters and globals, registered on the console's blueprint. Times are
relative ("5 min ago") with the exact moment, in DISPLAY_TIMEZONE, in a tooltip and
in the `<time datetime>` attribute for machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from automation.events.payloads import ENTITY_KINDS
from automation.rules.hours import ActiveHours
from automation.store import browse

#: amoCRM's card path for each entity kind; a chat's contact is a contact card.
CARD_PATHS = {
    "lead": "leads",
    "contact": "contacts",
    "company": "companies",
    "customer": "customers",
    "chat_contact": "contacts",
}
#: How a delivery's entity kind is searched for in the launch list (`q=contact:N`):
#: a chat's contact is a contact there.
SEARCH_KINDS = {**{kind: kind for kind in CARD_PATHS}, "chat_contact": "contact"}
_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def relative(moment: datetime, now: datetime) -> str:
    """`5 min ago`, `in 2 h`, `just now`: the largest whole unit."""
    seconds = int((now - moment).total_seconds())
    if abs(seconds) < 1:
        return "just now"
    amount, unit = next(
        (abs(seconds) // size, name) for size, name in _UNITS if abs(seconds) >= size
    )
    return f"{amount} {unit} ago" if seconds > 0 else f"in {amount} {unit}"


def exact(moment: datetime, zone: str) -> str:
    """`2026-12-06 23:10:03 Europe/Moscow`."""
    return f"{moment.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S} {zone}"


def time_tag(moment: datetime | None, zone: str, now: datetime | None = None) -> Markup:
    """A `<time>` element: relative text, exact time as its title; `-` for None."""
    if moment is None:
        return Markup("&ndash;")
    now = now or datetime.now(UTC)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        moment.isoformat(), exact(moment, zone), relative(moment, now)
    )


def count(value: int, cap: int | None = None) -> str:
    """`1,234`, or `10,000+` past the cap a capped count stopped at."""
    cap = browse.COUNT_CAP if cap is None else cap
    return f"{cap:,}+" if value > cap else f"{value:,}"


def entity_name(entity_type: int) -> str:
    return ENTITY_KINDS.get(entity_type, f"entity type {entity_type}")


def entity_link(entity_type: int, entity_id: int, base_url: str | None) -> Markup:
    """`lead 123`, linked to its card in amoCRM when the account's URL is known."""
    kind = ENTITY_KINDS.get(entity_type)
    if kind is None:
        return escape(f"{entity_name(entity_type)} {entity_id}")
    return kind_link(kind, entity_id, base_url)


def kind_link(kind: str, entity_id: int, base_url: str | None) -> Markup:
    """The same for an entity named by kind (`lead`, …, `chat_contact`), as deliveries
    and their explanations name them."""
    text = f"{kind.replace('_', ' ')} {entity_id}"
    path = CARD_PATHS.get(kind)
    if base_url is None or path is None:
        return escape(text)
    href = f"{base_url}/{path}/detail/{entity_id}"
    return Markup('<a href="{}" rel="noopener noreferrer" target="_blank">{}</a>').format(
        href, text
    )


def launch_search(kind: str, entity_id: int) -> str:
    """The launch list's search for an entity: `lead:123`, or `entity:123` for a kind
    the list does not know."""
    return f"{SEARCH_KINDS.get(kind, 'entity')}:{entity_id}"


def sparkline(values: Sequence[int], width: int = 240, height: int = 40) -> Markup:
    """Launches per hour as an inline SVG polyline, with a text equivalent for
    screen readers (no script, no stylesheet: it renders with JavaScript off)."""
    if not values:
        return Markup("")
    top = max(values) or 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (value / top) * (height - 4):.1f}"
        for i, value in enumerate(values)
    )
    label = f"launches per hour over the last {len(values)} hours: " + ", ".join(
        str(value) for value in values
    )
    return Markup(
        '<svg class="sparkline" role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        'aria-label="{label}"><title>{label}</title>'
        '<polyline fill="none" stroke="currentColor" stroke-width="2" points="{points}"/></svg>'
    ).format(w=width, h=height, label=label, points=points)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def hours(active: ActiveHours | None) -> str:
    """`Mon Tue 09:00–18:00 Europe/Moscow`; `any time` without windows."""
    if active is None:
        return "any time"
    return "; ".join(
        f"{' '.join(_DAYS[day] for day in sorted(window.days))} "
        f"{_clock(window.start)}–{_clock(window.end)} {window.zone.key}"
        for window in active.windows
    )


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
