"""Explaining one large delivery (a benchmark, not a test): sizes and times.

Builds a migrated SQLite database with one 30,000-lead form webhook, queued as the
webhook queues a large body and expanded by a dispatcher's expander, then asks for its
explanation every way there is and prints each answer's size and time:
`deliveries show` (the CLI's text), `GET /api/deliveries/<id>/explain`, the console's
`/ui/deliveries/<id>` and `GET /api/deliveries?limit=2`.

    python bench/explain.py [--leads 30000] [--database PATH]

A database made earlier at PATH is reused.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner

from automation import create_app
from automation.cli import main
from automation.config import Settings
from automation.dispatch.expander import Expander

TOKEN = "bench-admin-token-0123456789"
RULES_FILE = """\
version: 1
rules:
  - {name: welcome, on: lead.added, launch: {bot_id: 404, entity: lead}}
"""


def leads_form(count: int) -> bytes:
    fields = ["account[id]=30112233", "account[subdomain]=mybrand"]
    fields += [f"leads[add][{i}][id]={27_000_000 + i}" for i in range(count)]
    return "&".join(fields).encode()


def timed(label: str, ask: object) -> None:
    started = time.perf_counter()
    try:
        size = len(ask())  # type: ignore[operator]
    except AssertionError as exc:  # an option this version of the code lacks
        print(f"{label:<44} not available ({str(exc)[:60]!r})")
        return
    print(f"{label:<44} {size:>12,} bytes  {time.perf_counter() - started:6.2f} s")


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=30_000)
    parser.add_argument("--database", type=Path)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    path = options.database or folder / "bench.db"
    (folder / "rules.yaml").write_text(RULES_FILE)
    url = f"sqlite:///{path}"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        rules_file=str(folder / "rules.yaml"),
        admin_token=TOKEN,
        webhook_secret="bench-secret-0123456789",
        amocrm_subdomain="mybrand",
        max_body_bytes=64 * 1024 * 1024,
    )
    fresh = not path.exists()
    if fresh:
        from automation.store.database import upgrade

        upgrade(url)
    app = create_app(settings)
    client = app.test_client()
    if fresh:
        answer = client.post(
            "/webhooks/amocrm/bench-secret-0123456789",
            data=leads_form(options.leads),
            content_type="application/x-www-form-urlencoded",
        )
        assert answer.json is not None and answer.json.get("status") == "queued", answer.json
        sessions = app.extensions["automation"].sessions
        expander = Expander(sessions, lambda: "bench", timedelta(seconds=30), "x")
        expander.pause_share = 0.0
        started = time.perf_counter()
        expander.drain()
        print(f"expanded {options.leads:,} leads in {time.perf_counter() - started:.1f} s")
    delivery_id = 1
    auth = {"Authorization": f"Bearer {TOKEN}"}
    login = client.get("/ui/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login)
    assert csrf is not None
    client.post("/ui/login", data={"token": TOKEN, "csrf_token": csrf.group(1)})
    os.environ |= {"DATABASE_URL": url, "RULES_FILE": str(folder / "rules.yaml")}
    runner = CliRunner()

    def show(*extra: str) -> bytes:
        result = runner.invoke(main, ["deliveries", "show", str(delivery_id), *extra])
        assert result.exit_code == 0, result.output
        return result.output.encode()

    def get(url: str, **kw: object) -> bytes:
        answer = client.get(url, **kw)  # type: ignore[arg-type]
        assert answer.status_code == 200, answer.status_code
        return answer.get_data()

    print(f"{options.leads:,} leads, delivery #{delivery_id} ({path})")
    timed("deliveries show", show)
    timed("deliveries show --events 29950:30000", lambda: show("--events", "29950:30000"))
    timed(
        "GET /api/deliveries/<id>/explain", lambda: get("/api/deliveries/1/explain", headers=auth)
    )
    timed("GET /api/deliveries?limit=2", lambda: get("/api/deliveries?limit=2", headers=auth))
    timed("GET /api/deliveries/<id>", lambda: get("/api/deliveries/1", headers=auth))
    timed("GET /ui/deliveries/<id>", lambda: get("/ui/deliveries/1"))


if __name__ == "__main__":
    main_()
