"""The documentation tells the truth about the code it documents.

README.md is the front door; the reference lives in docs/*.md and bench/README.md.
These tests walk the code (settings, CLI commands, rules keys) and the documents
(links, anchors, the quickstart commands), so that a new setting, command or rules key
cannot land undocumented and a moved heading cannot leave a dead link. Each checker is
a function returning what is wrong, tried on the real documents and on a document
with one thing missing, so that each test is seen to be able to fail.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import BaseModel

from automation.cli import main
from automation.config import Settings
from automation.rules import conditions, spec
from automation.rules.load import load_rules

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
RULES = DOCS / "rules.md"
CI = ROOT / ".ci" / "run"


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]


def all_docs_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in documents())


# ------------------------------------------------------------ markdown, just enough

FENCE = re.compile(r"^(```|~~~)")
#: `[text](target)`, not an image's `![...]`; the target ends at a space or `)`.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> Iterator[str]:
    """Lines outside fenced code blocks: a `# comment` in a shell block is no heading."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to `-`."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, with GitHub's `-1`, `-2` suffixes for repeats."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match[1])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(text: str) -> Iterator[str]:
    for line in prose_lines(text):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                yield target


def broken_links(path: Path, text: str) -> list[str]:
    """Relative links of `text` (the document at `path`) whose file or anchor is missing."""
    broken = []
    for target in relative_links(text):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}: {target}: no file {linked}")
        elif anchor and anchor not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{path.name}: {target}: no heading #{anchor} in {linked.name}")
    return broken


def table_rows(text: str) -> Iterator[list[str]]:
    """Cells of every table row (header and separator rows included)."""
    for line in prose_lines(text):
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            yield [cell.strip() for cell in cells]


# ------------------------------------------------------------------------- links


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_in_the_documents_resolves(path: Path) -> None:
    assert broken_links(path, path.read_text(encoding="utf-8")) == []


def test_a_link_to_a_missing_file_or_heading_is_reported() -> None:
    text = "[ok](docs/rules.md#conditions-when) [gone](docs/nope.md) [bad](docs/rules.md#nope)"

    broken = broken_links(README, text)

    assert [line.split(": ")[1] for line in broken] == ["docs/nope.md", "docs/rules.md#nope"]


def test_anchors_follow_githubs_spelling() -> None:
    text = "# The `launch_log` view\n## Test cases (`rules test --cases`)\n# Logs\n# Logs\n"

    assert anchors(text) == {
        "the-launch_log-view",
        "test-cases-rules-test---cases",
        "logs",
        "logs-1",
    }


# ------------------------------------------------------------------------ settings


def env_names() -> list[str]:
    """Every variable `Settings` reads: its alias, else its name (no prefix is set)."""
    assert not Settings.model_config.get("env_prefix")
    return [(field.alias or name).upper() for name, field in Settings.model_fields.items()]


def shown_default(name: str) -> str | None:
    """How the configuration table must show a field's default, where it has a plain one."""
    default = Settings.model_fields[name.lower()].default
    if isinstance(default, bool) or default is None:
        return None
    if isinstance(default, tuple):  # e.g. AMOCRM_TIMEOUT: written as the env spells it
        return "`" + ",".join(_number(part) for part in default) + "`"
    return f"`{_number(default)}`"


def _number(value: object) -> str:
    return str(int(value) if isinstance(value, float) and value.is_integer() else value)


def undocumented_settings(text: str) -> list[str]:
    """Settings without their own row in the table of `text` (first cell `` `NAME` ``),
    or whose row's last cell does not show the code's default."""
    rows = {row[0]: row for row in table_rows(text)}
    problems = []
    for name in env_names():
        row = rows.get(f"`{name}`")
        default = shown_default(name)
        if row is None:
            problems.append(f"{name}: no row in the table")
        elif default is not None and default not in row[-1]:
            problems.append(f"{name}: default {default} not in {row[-1]!r}")
    return problems


def test_every_setting_is_documented_with_its_default() -> None:
    assert undocumented_settings(CONFIGURATION.read_text(encoding="utf-8")) == []


def test_a_setting_without_a_row_or_with_a_wrong_default_is_reported() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    without_rps = "\n".join(
        line for line in text.splitlines() if not line.startswith("| `AMOCRM_MAX_RPS`")
    )
    wrong_default = text.replace("| `1048576` |", "| `1000000` |")

    assert undocumented_settings(without_rps) == ["AMOCRM_MAX_RPS: no row in the table"]
    assert [p.split(":")[0] for p in undocumented_settings(wrong_default)] == ["MAX_BODY_BYTES"]


def test_every_variable_in_the_configuration_tables_exists() -> None:
    """A documented variable the code does not read is a trap (a typo, a removed one)."""
    process_only = {"PROMETHEUS_MULTIPROC_DIR", "TEST_DATABASE_URL", "WEB_THREADS"}
    text = CONFIGURATION.read_text(encoding="utf-8")
    documented = {
        row[0].strip("`") for row in table_rows(text) if re.fullmatch(r"`[A-Z0-9_]+`", row[0])
    }

    assert documented - set(env_names()) == process_only
    assert _serve_option_variable("--threads") == "WEB_THREADS"


def _serve_option_variable(option: str) -> str | None:
    """The variable a `serve` option reads (click's envvar), for the table's own rows."""
    from automation.cli.server import serve

    [param] = [p for p in serve.params if option in p.opts]
    return param.envvar if isinstance(param.envvar, str) else None


# ---------------------------------------------------------------------- commands


def commands(
    group: click.Group = main, path: str = "automation"
) -> Iterator[tuple[str, click.Command]]:
    """Every leaf command under `group`, with its full name (`automation launches list`)."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def option_names(command: click.Command) -> list[str]:
    return [
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("--")
    ]


def undocumented_commands(text: str) -> list[str]:
    """Commands without a row of the command reference (first cell `` `automation …` ``),
    or whose row does not name each of their long options."""
    rows = {row[0]: " | ".join(row[1:]) for row in table_rows(text)}
    problems = []
    for name, command in commands():
        row = rows.get(f"`{name}`")
        if row is None:
            problems.append(f"{name}: no row in the command reference")
            continue
        problems.extend(
            f"{name}: option {option} not in its row"
            for option in option_names(command)
            if not re.search(rf"{re.escape(option)}(?![\w-])", row)
        )
    return problems


def test_the_command_walk_finds_every_command_group() -> None:
    names = [name for name, _ in commands()]

    assert {"automation serve", "automation launches list", "automation webhooks sync"} <= set(
        names
    )


def test_every_command_and_option_is_in_the_command_reference() -> None:
    assert undocumented_commands(all_docs_text()) == []


def test_a_command_or_option_missing_from_the_reference_is_reported() -> None:
    text = all_docs_text()
    without_prune = "\n".join(
        line for line in text.splitlines() if not line.startswith("| `automation prune`")
    )
    without_json = text.replace("`--limit` (default 50, at most 10000), `--json`", "`--limit`")

    assert undocumented_commands(without_prune) == [
        "automation prune: no row in the command reference"
    ]
    assert undocumented_commands(without_json) == [
        "automation launches list: option --json not in its row"
    ]


# ---------------------------------------------------------------------- rules keys


def rules_keys() -> set[str]:
    """Every key a rules file may hold: the fields (by their YAML spelling) of each
    pydantic model in `automation.rules.spec`."""
    models = [
        value
        for value in vars(spec).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == spec.__name__
    ]
    assert len(models) >= 5, "the walk should find FileSpec, RuleSpec, LaunchSpec, ..."
    return {field.alias or name for model in models for name, field in model.model_fields.items()}


def undocumented_rules_keys(text: str) -> list[str]:
    """Keys not shown in code in `text`, alone (`` `stop` ``) or as the last part of a
    dotted path (`` `launch.bot_id` ``)."""
    return sorted(
        key for key in rules_keys() if not re.search(rf"`(?:[\w.]+\.)?{re.escape(key)}`", text)
    )


def test_every_rules_key_is_in_the_rules_reference() -> None:
    assert undocumented_rules_keys(RULES.read_text(encoding="utf-8")) == []


def test_a_rules_key_missing_from_the_reference_is_reported() -> None:
    text = RULES.read_text(encoding="utf-8").replace("`outside_hours`", "outside hours")

    assert undocumented_rules_keys(text) == ["outside_hours"]


def undocumented_operators(text: str) -> list[str]:
    """Condition operators not shown in `text`, in an example (`{gte: …}`) or in code
    (`` `gte` ``)."""
    return [op for op in conditions.OPERATORS if not re.search(rf"[{{,]\s*{op}:|`{op}`", text)]


def test_every_condition_operator_is_in_the_rules_reference() -> None:
    assert undocumented_operators(RULES.read_text(encoding="utf-8")) == []


def test_a_condition_operator_missing_from_the_reference_is_reported() -> None:
    text = RULES.read_text(encoding="utf-8").replace("{eq: 59936202}", "59936202")

    assert undocumented_operators(text) == ["eq"]


# ------------------------------------------------------------ metrics and URLs

METRICS = DOCS / "metrics-and-logs.md"


def scraped_metrics(client: Any) -> list[str]:
    """Every metric `/metrics` names, without prometheus-client's `_created` series."""
    page = client.get("/metrics").get_data(as_text=True)
    names = re.findall(r"^# TYPE (\S+) ", page, re.MULTILINE)
    return [name for name in names if not name.endswith("_created")]


def undocumented_metrics(names: list[str], text: str) -> list[str]:
    """Metrics without a row of their own (first cell `` `name` ``) in `text`."""
    rows = {row[0] for row in table_rows(text)}
    return [name for name in names if f"`{name}`" not in rows]


def test_every_scraped_metric_has_a_row_in_the_metrics_reference(client: Any) -> None:
    names = scraped_metrics(client)

    assert "automation_webhooks_total" in names
    assert "automation_launches_due" in names  # a database gauge
    assert undocumented_metrics(names, METRICS.read_text(encoding="utf-8")) == []


def test_a_metric_missing_from_the_reference_is_reported() -> None:
    text = METRICS.read_text(encoding="utf-8")

    assert undocumented_metrics(["automation_nothing_total"], text) == ["automation_nothing_total"]


def route_pattern(rule: str) -> re.Pattern[str]:
    """A Flask rule as the documents spell it: `<int:launch_id>` may read `<id>`, and the
    path must end there (`/api/launches` is not found inside `/api/launches/<id>`)."""
    parts = re.split(r"<[^>]+>", rule.rstrip("/"))
    body = r"<[^>`]+>".join(re.escape(part) for part in parts)
    return re.compile(rf"{body}/?(?![\w/<.-])")


def undocumented_routes(rules: list[str], text: str) -> list[str]:
    return [rule for rule in rules if not route_pattern(rule).search(text)]


def test_every_url_the_server_answers_is_documented(app: Any) -> None:
    rules = [rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"]

    assert "/healthz" in rules
    assert undocumented_routes(rules, all_docs_text()) == []


def test_an_undocumented_url_is_reported() -> None:
    rules = ["/api/launches", "/api/launches/<int:launch_id>", "/api/launches/<int:id>/calls"]
    text = "`GET /api/launches/<id>` and `/api/launches?status=failed`"

    assert undocumented_routes(rules, text) == ["/api/launches/<int:id>/calls"]


# ------------------------------------------------------- the two quickstart commands


def marked_command(text: str, marker: str) -> str:
    """The one-line shell command in the fenced block right after `<!-- command:NAME -->`."""
    match = re.search(rf"<!-- command:{marker} -->\s*```sh\n(.+?)\n```", text, re.DOTALL)
    assert match, f"README.md has no `<!-- command:{marker} -->` followed by a sh block"
    command = match[1].strip()
    assert "\n" not in command, f"the {marker} command must be one line"
    return command


def pip_installs(command: str) -> list[str]:
    """What each `pip install` of a shell command line installs (its non-option words)."""
    installed = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        if "pip" in " ".join(words[:1]) and "install" in words:
            after = words[words.index("install") + 1 :]
            installed += [word for word in after if not word.startswith("-")]
    return installed


def test_ci_runs_the_readme_test_command_word_for_word() -> None:
    command = marked_command(README.read_text(encoding="utf-8"), "test")
    ci_lines = [line.strip() for line in CI.read_text(encoding="utf-8").splitlines()]

    assert "pytest" in command
    assert command in ci_lines, f".ci/run does not run the README's test command: {command}"


def test_the_serve_command_installs_what_serving_needs_and_no_test_tools() -> None:
    command = marked_command(README.read_text(encoding="utf-8"), "serve")

    assert "automation serve" in command
    assert pip_installs(command) == ["."]


def test_the_test_command_installs_the_test_extras() -> None:
    command = marked_command(README.read_text(encoding="utf-8"), "test")

    assert pip_installs(command) == [".[test]"]


def test_pip_installs_reads_what_a_command_installs() -> None:
    assert pip_installs("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'") == [
        ".[test]"
    ]
    assert pip_installs("pip install -e . && automation serve") == ["."]


def test_the_rules_example_in_the_readme_validates() -> None:
    readme = README.read_text(encoding="utf-8")
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]

    rules = load_rules(example, "README.md")

    assert [rule.name for rule in rules.rules] == ["qualified-lead-welcome"]
