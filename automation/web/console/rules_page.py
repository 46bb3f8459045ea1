"""`/ui/rules`: the rules in use, their version, the file's last error, conflicts, and
a form that runs a webhook body through them without writing anything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from flask import render_template, request

from automation.errors import PayloadError
from automation.rules.cases import decode_payload, describe_event
from automation.rules.ruleset import Decision, RuleSet
from automation.web.console import bp
from automation.web.runtime import runtime

#: Largest body the try form takes: the webhook's own limit is for amoCRM.
MAX_TRY_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Tried:
    """One event of a tried body and every rule's decision on it."""

    event: str
    decisions: list[Decision]


@bp.get("/rules")
def rules() -> str:
    return _page()


@bp.post("/rules/try")
def try_body() -> tuple[str, int] | str:
    """Decode the body as the webhook would and show each rule's decision; stores
    nothing (cooldowns, which need the launch log, are not judged here)."""
    body = request.form.get("body", "").strip().encode()
    current = runtime().rules.maybe_reload()
    if not body:
        return _page(body="", error="body: paste a webhook body (form-encoded or JSON)"), 400
    if len(body) > MAX_TRY_BYTES:
        return _page(body="", error=f"body: at most {MAX_TRY_BYTES:,} bytes"), 400
    if current is None:
        return _page(body=body.decode(), error="no rules are loaded: fix the file first"), 409
    now = datetime.now(UTC)
    try:
        payload = decode_payload(body, now)
    except PayloadError as exc:
        return _page(body=body.decode(), error=f"body: {exc}"), 400
    return _page(body=body.decode(), tried=_decide(current, payload.events, now))


def _decide(current: RuleSet, events: object, now: datetime) -> list[Tried]:
    return [
        Tried(describe_event(event), current.explain(event, now))
        for event in events  # type: ignore[attr-defined]
    ]


def _page(body: str = "", tried: list[Tried] | None = None, error: str | None = None) -> str:
    loader = runtime().rules
    current = loader.maybe_reload()
    return render_template(
        "rules.html",
        loader=loader,
        ruleset=current,
        conflicts=current.conflicts() if current else [],
        body=body,
        tried=tried,
        error=error,
    )
