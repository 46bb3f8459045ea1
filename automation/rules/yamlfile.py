"""YAML files read with line marks, and the problems found in them.

A rules file and a cases file are read the same way: the text is composed into nodes
that remember their line and column (YAML 1.2 scalars, duplicate keys reported), the
nodes are turned into plain data, and every `Problem` found while reading or judging
that data is pointed back at its node: `file:line:col: rules[i] (name="…"): path:
message`. `show` and `did_you_mean` are how those messages quote what the file said.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from automation.errors import RulesError
from automation.rules.yamlerrors import reader_problem, syntax_problem

#: A place in the data read from a file: keys and list indexes, outermost first.
Loc = tuple[Any, ...]
#: What a path into the data finds where nothing is; `show` prints it as `missing`.
MISSING: Final = object()


def show(value: Any, limit: int = 60) -> str:
    """`repr` for messages, shortened: a pasted mapping should not flood the screen."""
    if value is MISSING:
        return "missing"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: object, choices: Sequence[str]) -> str:
    """`; did you mean 'x'?` for the closest of `choices`, or nothing."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def is_int(value: Any) -> bool:
    """An integer as a file may give it: `142` or `"142"`, never `true`.

    Text of more than a thousand digits is not: `int()` refuses very long text
    (Python's 4300-digit limit), and no id is anywhere near that long.
    """
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (
        isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 1000
    )


def read_text(path: Path) -> str:
    """The UTF-8 text of a file; an unreadable file is a `RulesError`."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RulesError([f"{path}: cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise RulesError([f"{path}: not UTF-8 text (byte {exc.start})"], str(path)) from exc


# ------------------------------------------------------------------------------ YAML


#: How deep a file may nest. PyYAML composes nodes recursively, and so do the steps
#: after it; a few hundred levels (`[[[[…`) would exhaust the stack, so the depth is
#: capped far above anything a rules or cases file needs (about 10 levels).
MAX_DEPTH: Final = 64
#: How many values aliases may repeat (a value counts once more each time an alias
#: brings it back): nested aliases (`b: [*a, *a, …]`, `c: [*b, *b, …]`) grow
#: exponentially. A file without aliases repeats nothing, however long it is.
MAX_VALUES: Final = 100_000


class YamlLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: `on`, `yes`, `no` stay text and `18:00` stays a time of day.

    PyYAML follows YAML 1.1, where the key `on:` is the boolean true and an unquoted
    `18:00` is the base-60 integer 1080; either would silently break a rules file.
    Nesting deeper than `MAX_DEPTH` is a `ComposerError` with the line it starts on.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, refusing to go deeper than `MAX_DEPTH` (see there)."""
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            mark: yaml.error.Mark | None = event.start_mark
            problem = f"the file nests more than {MAX_DEPTH} levels deep"
            raise yaml.composer.ComposerError(None, None, problem, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_YAML11_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp")}
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?[0-9]+$", "-+0123456789"),
    ("float", r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$", "-+0123456789."),
):
    YamlLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )

_SCALARS: Mapping[str, Callable[[str], Any]] = {
    "tag:yaml.org,2002:str": str,
    "tag:yaml.org,2002:int": int,
    "tag:yaml.org,2002:float": float,
    "tag:yaml.org,2002:bool": lambda text: text.lower() == "true",
    "tag:yaml.org,2002:null": lambda text: None,
}
_MERGE_TAG = "tag:yaml.org,2002:merge"


def compose(text: str, filename: str) -> yaml.Node | None:
    """Parse `text` into a node tree with marks; every failure becomes a `RulesError`.

    The loader is built inside the `try`: PyYAML checks the characters of the text
    in its constructor, so a control character (BEL, NUL) fails there.
    """
    loader: YamlLoader | None = None
    try:
        loader = YamlLoader(text)
        return loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        raise RulesError([reader_problem(exc, text, filename)], filename) from exc
    except yaml.MarkedYAMLError as exc:
        raise RulesError([syntax_problem(exc, text, filename)], filename) from exc
    except yaml.YAMLError as exc:
        raise RulesError([f"{filename}: invalid YAML: {exc}"], filename) from exc
    except RecursionError as exc:  # the depth guard should come first; never a traceback
        mark = loader.get_mark() if loader is not None else None
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        raise RulesError([f"{where}: the file nests too deeply"], filename) from exc
    finally:
        if loader is not None:
            loader.dispose()


@dataclass
class Problem:
    """One validation problem: where (as a data path) and what."""

    loc: Loc
    message: str
    mark_loc: Loc | None = None  # point here instead of `loc` (an unknown key itself)
    mark: yaml.Mark | None = None  # or exactly here (a duplicate key)


class Converter:
    """Turn composed YAML nodes into plain data, reporting duplicate keys.

    PyYAML's own constructor keeps the last of two equal keys without a word, so a
    rule with two `when:` blocks would silently lose the first. Merge keys (`<<:`)
    are honoured, with the mapping's own keys winning, as YAML specifies.
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self.unreadable: list[Loc] = []  # values reported here, not to be judged again
        self._open: set[int] = set()
        self._made: set[int] = set()  # nodes converted at least once
        self._repeats = 0  # values aliases brought back (`MAX_VALUES`)

    def convert(self, node: yaml.Node, loc: Loc) -> Any:
        """Plain data for `node`; problems are collected, never raised."""
        if id(node) in self._open:
            self.problems.append(Problem(loc, "recursive alias", mark=node.start_mark))
            return None
        if self._over_limit(node, loc):
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
            known = len(self.problems)
            value = self._scalar(node, loc)
            if len(self.problems) > known:
                self.unreadable.append(loc)
            return value
        finally:
            self._open.discard(id(node))

    def _over_limit(self, node: yaml.Node, loc: Loc) -> bool:
        """Aliases can nest and repeat what composing saw once: cap depth and size here,
        so that later steps (validation, messages) never recurse or work without end."""
        if id(node) in self._made:
            self._repeats += 1
        else:
            self._made.add(id(node))
        if len(loc) > MAX_DEPTH:
            message = f"the file nests more than {MAX_DEPTH} levels deep (through aliases)"
        elif self._repeats > MAX_VALUES:
            message = f"aliases repeat more than {MAX_VALUES} values"
        else:
            return False
        if not any(problem.message == message for problem in self.problems):
            self.problems.append(Problem(loc, message, mark=node.start_mark))
        self.unreadable.append(loc)
        return True

    def without_echoes(self, problems: list[Problem]) -> list[Problem]:
        """Drop validation complaints about values YAML could not read (reported already)."""
        return [
            problem
            for problem in problems
            if problem.mark is not None
            or not any(problem.loc[: len(u)] == u for u in self.unreadable)
        ]

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        construct = _SCALARS.get(node.tag)
        try:
            if construct is None:
                raise ValueError(f"unsupported YAML tag {node.tag!r}")
            return construct(node.value)
        except ValueError as exc:
            self.problems.append(Problem(loc, str(exc), mark=node.start_mark))
            return None

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        own: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._merge(value_node, loc, merged)
                continue
            key = self._key(key_node, loc)
            if key is MISSING:
                continue
            if key in own:
                self.problems.append(
                    Problem(loc, f"duplicate key {key!r}", mark=key_node.start_mark)
                )
            else:
                own[key] = self.convert(value_node, (*loc, key))
        return {**merged, **own}

    def _key(self, node: yaml.Node, loc: Loc) -> Any:
        """A mapping key: text, or a whole number (custom field ids); else `MISSING`.

        Any other key is reported here, at its own line, once: `null`, `true` or
        `1.5` never name anything in these files, and Python's `1 == True` would
        otherwise pass `1` and `true` off as one key. A key whose tag could not be
        read is reported already and its value is not judged at all.
        """
        if not isinstance(node, yaml.ScalarNode):
            self.problems.append(Problem(loc, "keys must be plain text", mark=node.start_mark))
            return MISSING
        known = len(self.problems)
        key = self._scalar(node, loc)
        if len(self.problems) > known:
            return MISSING
        if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
            return key
        shown = json.dumps(key)
        message = f'a key must be text, got {shown}; quote it ("{node.value}") to mean the text'
        self.problems.append(Problem(loc, message, mark=node.start_mark))
        return MISSING

    def _merge(self, node: yaml.Node, loc: Loc, merged: dict[Any, Any]) -> None:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            value = self.convert(source, loc)
            if not isinstance(value, dict):
                message = "'<<' can only merge mappings"
                self.problems.append(Problem(loc, message, mark=source.start_mark))
                continue
            for key, item in value.items():
                merged.setdefault(key, item)


# ------------------------------------------------------------------- marks, messages


def _pairs(node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    """Key/value node pairs of a mapping, its own first, then those of `<<:` merges."""
    merges = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merges.append(value_node)
        else:
            yield key_node, value_node
    for source in merges:
        for item in source.value if isinstance(source, yaml.SequenceNode) else [source]:
            if isinstance(item, yaml.MappingNode):
                yield from _pairs(item)


def _child(node: yaml.Node | None, step: Any) -> tuple[yaml.Mark, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in _pairs(node):
            construct = _SCALARS.get(key_node.tag)
            if isinstance(key_node, yaml.ScalarNode) and construct is not None:
                try:
                    key = construct(key_node.value)
                    if type(key) is type(step) and key == step:  # `1` is not `true`
                        return key_node.start_mark, value_node
                except ValueError:
                    continue
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step].start_mark, node.value[step]
    return None


def _locate(root: yaml.Node, loc: Loc) -> tuple[yaml.Mark, Loc]:
    """The mark of the deepest node `loc` reaches, and `loc` as the user wrote it.

    Validation wraps a single window or event type in a list; such an index has no
    node of its own, so it is skipped and left out of the path shown.
    """
    node: yaml.Node | None = root
    mark = root.start_mark
    shown: list[Any] = []
    for step in loc:
        found = _child(node, step)
        if found is not None:
            mark, node = found
        elif isinstance(step, int) and node is not None and not _is_sequence(node):
            continue
        else:
            node = None
        shown.append(step)
    return mark, tuple(shown)


def _is_sequence(node: yaml.Node) -> bool:
    return isinstance(node, yaml.SequenceNode)


def render(problems: list[Problem], root: yaml.Node, data: Any, filename: str) -> list[str]:
    """Problems → `file:line:col: where: message` lines, in file order."""
    rendered = []
    for problem in problems:
        mark = problem.mark or _locate(root, problem.mark_loc or problem.loc)[0]
        where = _where(_locate(root, problem.loc)[1], data)
        text = f"{where}: {problem.message}" if where else problem.message
        line = f"{filename}:{mark.line + 1}:{mark.column + 1}: {text}"
        rendered.append((mark.line, mark.column, line))
    return [line for *_, line in sorted(rendered, key=lambda item: item[:2])]


def _where(loc: Loc, data: Any) -> str:
    """`("rules", 2, "launch", "bot_id")` → `rules[2] (name="vip"): launch.bot_id`.

    A number is shown as an index (`[2]`) only in a list: as a mapping key (a custom
    field id) it is a name like any other (`custom_fields.1425011`).
    """
    head, rest, node = "", loc, data
    if len(loc) >= 2 and isinstance(loc[1], int) and loc[0] in ("rules", "cases"):
        head, rest = f"{loc[0]}[{loc[1]}]{_item_label(data, loc[0], loc[1])}", loc[2:]
        node = _step(_step(data, loc[0]), loc[1])
    path = ""
    for step in rest:
        if isinstance(step, int) and not isinstance(node, dict):
            path += f"[{step}]"
        else:
            path += f".{step}" if path else str(step)
        node = _step(node, step)
    return ": ".join(part for part in (head, path) if part)


def _step(node: Any, step: Any) -> Any:
    """`node[step]` of converted data, or None where there is nothing."""
    if isinstance(node, dict):
        return node.get(step)
    if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
        return node[step]
    return None


def _item_label(data: Any, key: str, index: int) -> str:
    items = data.get(key) if isinstance(data, dict) else None
    item = items[index] if isinstance(items, list) and index < len(items) else None
    name = item.get("name") if isinstance(item, dict) else None
    return f" (name={json.dumps(name, ensure_ascii=False)})" if isinstance(name, str) else ""
