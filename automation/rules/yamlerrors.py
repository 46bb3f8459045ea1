"""What PyYAML's parse errors mean in a rules file, said at the line with the fix.

PyYAML reports a misaligned line as `expected <block end>, but found '<block mapping
start>' (while parsing a block collection at line 3)`, which tells a person editing
rules nothing. The common mistakes (a line indented to no level above it, a key
indented under a plain value, a tab, an unquoted `: ` in a value) are recognised from
the text around the error and explained with the indentation that would fix them;
anything else keeps PyYAML's words.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

#: Line breaks as YAML counts them (PyYAML's marks count lines the same way).
_BREAKS = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_KEY = re.compile(r"""\s*(?:-\s+)*("[^"]*"|'[^']*'|[^\s#'"][^:#]*?)\s*:(?:\s|$)""")


@dataclass(frozen=True)
class _Level:
    """An indentation a line above could continue: a key's, or a list item's dash."""

    spaces: int
    line: int  # 1-based
    label: str  # the key, or '-' for a dash


def reader_problem(exc: yaml.reader.ReaderError, text: str, filename: str) -> str:
    """`file:line:col` of a character YAML does not allow, which PyYAML gives as an offset."""
    position = min(max(exc.position, 0), len(text))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    character = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1])
    return (
        f"{filename}:{line}:{column}: invalid YAML: character U+{character:04X} "
        f"is not allowed ({exc.reason})"
    )


def syntax_problem(exc: yaml.MarkedYAMLError, text: str, filename: str) -> str:
    """`file:line:col: message` for a YAML syntax error, in our words where we can."""
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return f"{filename}: invalid YAML: {exc.problem}"
    where = f"{filename}:{mark.line + 1}:{mark.column + 1}"
    lines = _BREAKS.split(text)
    explained = _explain(exc, lines, mark)
    if explained is not None:
        if explained.startswith("indentation:"):  # point at the line's first character
            where = f"{filename}:{mark.line + 1}:{_indent(lines[mark.line]) + 1}"
        return f"{where}: {explained}"
    context = ""
    if exc.context:
        started = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        context = f" ({exc.context}{started})"
    return f"{where}: invalid YAML: {exc.problem}{context}"


def _explain(exc: yaml.MarkedYAMLError, lines: list[str], mark: yaml.Mark) -> str | None:
    problem = exc.problem or ""
    if mark.line >= len(lines):
        return None
    if "'\\t'" in problem:
        return "a tab character: YAML indents with spaces only; replace the tab with spaces"
    if problem.startswith("expected <block end>"):
        return _misaligned(lines, mark.line)
    if problem == "mapping values are not allowed here":
        return _colon_in_value(lines, mark) or _indented_under_value(lines, mark.line)
    return None


def _misaligned(lines: list[str], index: int) -> str | None:
    """A line indented to no level of the blocks above it."""
    line = lines[index]
    spaces = _indent(line)
    is_item = line.lstrip().startswith("-")
    levels = [level for level in _open_levels(lines, index) if (level.label == "-") == is_item]
    if not levels:
        return None
    best = min(abs(level.spaces - spaces) for level in levels)
    nearest = sorted(
        (level for level in levels if abs(level.spaces - spaces) == best),
        key=lambda level: -level.spaces,
    )
    what, kind = ("this list item", "list item") if is_item else (repr(_key_of(line)), "key")
    fixes = " or ".join(_beside(level) for level in nearest)
    return (
        f"indentation: {what} is indented {_spaces(spaces)}, which lines up with no "
        f"{kind} above it; indent it {fixes}"
    )


def _beside(level: _Level) -> str:
    if level.label == "-":
        return f"{_spaces(level.spaces)}, as the list item on line {level.line}"
    return f"{_spaces(level.spaces)}, beside {level.label!r} (line {level.line})"


def _spaces(count: int) -> str:
    return f"{count} spaces" if count != 1 else "1 space"


def _open_levels(lines: list[str], index: int) -> list[_Level]:
    """The indentations that lines above `index` leave open, nearest first.

    Walking up, a line indented less than every line below it (up to `index`) opens
    a block the misaligned line could belong to; a list item opens two levels, its
    dash and the keys after it.
    """
    levels: list[_Level] = []
    lowest: int | None = None
    for number in range(index - 1, -1, -1):
        line = lines[number]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spaces = _indent(line)
        if lowest is not None and spaces >= lowest:
            continue
        lowest = spaces
        content = line.lstrip()
        if content.startswith("- "):
            after = content[2:]
            key = _key_of(after)
            if key is not None:
                levels.append(_Level(spaces + 2 + _indent(after), number + 1, key))
            levels.append(_Level(spaces, number + 1, "-"))
        elif (key := _key_of(line)) is not None:
            levels.append(_Level(spaces, number + 1, key))
    return _nearest_first(levels)


def _nearest_first(levels: list[_Level]) -> list[_Level]:
    """One level per indentation, the one on the nearest line above."""
    seen: set[tuple[int, bool]] = set()
    kept = []
    for level in levels:
        kind = (level.spaces, level.label == "-")
        if kind not in seen:
            seen.add(kind)
            kept.append(level)
    return kept


def _colon_in_value(lines: list[str], mark: yaml.Mark) -> str | None:
    """`name: Re: hello`: a second `: ` on the line of a key with a value."""
    line = lines[mark.line]
    key = _KEY.match(line)
    if key is None or key.end() > mark.column:
        return None
    value = line[key.end() :].strip()
    return (
        f"the value of {_key_of(line)!r} holds ': ', which YAML reads as another key; "
        f'quote the value: {_key_of(line)}: "{value}"'
    )


def _indented_under_value(lines: list[str], index: int) -> str | None:
    """A key indented deeper than the key above it, which already has a value."""
    above = next(
        (i for i in range(index - 1, -1, -1) if lines[i].strip() and not _comment(lines[i])),
        None,
    )
    if above is None:
        return None
    line, previous = lines[index], lines[above]
    if _indent(line) <= _indent(previous) or _key_of(previous) is None:
        return None
    spaces = _indent(previous) + (2 if previous.lstrip().startswith("- ") else 0)
    return (
        f"indentation: {_key_of(line)!r} is indented deeper than {_key_of(previous)!r} on "
        f"line {above + 1}, which already has a value, so YAML reads it as part of that "
        f"value; indent it {_spaces(spaces)}, beside {_key_of(previous)!r}"
    )


def _key_of(line: str) -> str | None:
    found = _KEY.match(line)
    return found[1].strip("'\"") if found else None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")
