"""Statements on the webhook's hot path: compiled once, run on the driver's cursor.

A webhook's transaction holds SQLite's only write lock, so every microsecond spent in
it is one the other gunicorn worker waits, and the ingest benchmark showed the
webhook's whole extra cost over a bare Flask app sat in storing it. SQLAlchemy's
`Connection.execute` spends about 100 µs of Python per statement (execution context,
result object, events) on an INSERT that SQLite does in 20.

So SQLAlchemy still does what it is good at: it compiles the statement from the
models, once per dialect, and every value goes through the column type's own bind
processor (what `execute` would store, byte for byte). Only the per-call machinery is
skipped. The same holds for the probes a webhook makes before storing a launch
(`CompiledSelect`: has another bot this chat? is this entity in its cooldown?), whose
answer is nearly always "no row". A driver error is re-raised as SQLAlchemy's
`DBAPIError` subclass with its parameters hidden, so callers keep catching
`SQLAlchemyError` and no webhook body or token reaches a log.

The dispatcher's statements (claim, start a call, settle) go the same way
(`CompiledStatement`): they run once per batch of up to 100 launches, and name the
batch's ids as one bound value (`in_ids`), a JSON array on SQLite and an array on
PostgreSQL, so the statement is the same text for any batch and binds three values,
not a hundred.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from typing import cast as typed

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Dialect,
    Executable,
    Insert,
    Select,
    String,
    TypeDecorator,
    bindparam,
    cast,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import TypeEngine

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    #: (column, its type's bind processor), in placeholder order for positional drivers.
    fields: tuple[tuple[str, Processor], ...]
    positional: bool

    def bind(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters: each value converted as `execute` would."""
        if len(values) != len(self.fields) or any(name not in values for name, _ in self.fields):
            names = sorted(name for name, _ in self.fields)
            raise ValueError(f"row has columns {sorted(values)}, not {names}")
        converted = [
            values[name] if process is None else process(values[name])
            for name, process in self.fields
        ]
        if self.positional:
            return tuple(converted)
        return {name: value for (name, _), value in zip(self.fields, converted, strict=True)}


class CompiledInsert:
    """`INSERT … RETURNING` (or a plain INSERT for `execute_many`), compiled per
    dialect on first use.

    `build` makes the statement for a dialect name (`ON CONFLICT` comes from the
    dialect's own `insert`). The columns are the keys of the first row inserted;
    every later row must have the same keys.
    """

    def __init__(self, build: Callable[[str], Insert]) -> None:
        self.build = build
        #: Keyed by what shapes the SQL: dialect, driver and its parameter style.
        self._by_dialect: dict[tuple[str, str, str], _Compiled] = {}

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run the INSERT in the connection's transaction; the RETURNING row, or None
        when no row was inserted (`ON CONFLICT DO NOTHING`)."""
        dialect = connection.dialect
        compiled = self._compiled(dialect, values)
        rows = _run(connection, compiled.sql, compiled.bind(values), fetch=1)
        return rows[0] if rows else None

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the INSERT (without RETURNING) once per row, in one driver call."""
        if not rows:
            return
        dialect = connection.dialect
        compiled = self._compiled(dialect, rows[0])
        _run(connection, compiled.sql, [compiled.bind(row) for row in rows], fetch=0, many=True)

    def _compiled(self, dialect: Dialect, values: Mapping[str, Any]) -> _Compiled:
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        compiled = self._by_dialect.get(key)
        if compiled is None:
            compiled = self._by_dialect[key] = self._compile(dialect, list(values))
        return compiled

    def _compile(self, dialect: Dialect, columns: list[str]) -> _Compiled:
        statement = self.build(dialect.name)
        sql = statement.compile(dialect=dialect, column_keys=columns)
        table = statement.table
        names = list(sql.positiontup or ()) if sql.positional else columns
        if sorted(sql.params) != sorted(columns):
            raise ValueError(f"the INSERT binds {sorted(sql.params)}, not the row's {columns}")
        fields = tuple(
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        )
        return _Compiled(sql.string, fields, sql.positional)


class CompiledSelect:
    """A SELECT of plain columns (ids, numbers), compiled per dialect on first use.

    `rows` gives the driver's raw tuples: no result processing, so select only columns
    whose raw value is what you want (ids), and read anything typed with a normal
    query once a probe found rows. Bound values go through their type's bind processor;
    a bind the caller does not give keeps the value it was built with (a constant). An
    `IN` list must be spelled as `or_` of equalities: an expanding bind has no fixed
    place in compiled SQL.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._by_dialect: dict[tuple[str, str, str], _CompiledSelect] = {}

    def rows(self, connection: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run it in the connection's transaction; every row, as the driver gives it."""
        dialect = connection.dialect
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        compiled = self._by_dialect.get(key)
        if compiled is None:
            compiled = self._by_dialect[key] = _CompiledSelect.of(self.statement, dialect)
        return _run(connection, compiled.sql, compiled.bind(values), fetch=None)


class CompiledStatement:
    """Any statement (an UPDATE fenced by a claim, a SELECT … FOR UPDATE), built by
    `build(dialect_name)` and compiled on first use per dialect, run on the driver's
    cursor.

    Binds are handled as in `CompiledSelect` (a bind not given keeps the value it was
    built with); a list of ids goes in one bind (`in_ids`). `rows` gives the driver's
    raw tuples, `execute` the number of rows the statement changed.
    """

    def __init__(self, build: Callable[[str], Executable]) -> None:
        self.build = build
        self._by_dialect: dict[tuple[str, str, str], _CompiledSelect] = {}

    def rows(self, connection: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run it in the connection's transaction; every row, as the driver gives it."""
        compiled = self._compiled(connection.dialect)
        return _run(connection, compiled.sql, compiled.bind(values), fetch=None)

    def typed_rows(
        self, connection: Connection, values: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Every row of a SELECT, each value converted by its column's type (a
        timestamp comes back an aware `datetime`, as from `execute`)."""
        compiled = self._compiled(connection.dialect)
        rows = _run(connection, compiled.sql, compiled.bind(values), fetch=None)
        processors = compiled.results
        return [
            tuple(
                value if process is None else process(value)
                for value, process in zip(row, processors, strict=True)
            )
            for row in rows
        ]

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> int:
        """Run it in the connection's transaction; how many rows it matched."""
        compiled = self._compiled(connection.dialect)
        return _run_counted(connection, compiled.sql, compiled.bind(values))

    def _compiled(self, dialect: Dialect) -> _CompiledSelect:
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        compiled = self._by_dialect.get(key)
        if compiled is None:
            statement = self.build(dialect.name)
            assert isinstance(statement, ClauseElement)
            compiled = _CompiledSelect.of(statement, dialect, postcompile=False)
            self._by_dialect[key] = compiled
        return compiled


class IdList(TypeDecorator[list[int]]):
    """A list of ids bound as ONE value: a JSON array on SQLite (read back with
    `json_each`), a `BIGINT[]` on PostgreSQL."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(BigInteger))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return json.dumps([int(id_) for id_ in value])


def in_ids(column: ColumnElement[int], dialect: str, name: str = "ids") -> ColumnElement[bool]:
    """`column` is one of the ids bound (as a list) to `name`: `= ANY(:ids)` on
    PostgreSQL, `IN (SELECT value FROM json_each(?))` on SQLite. The planner looks
    each id up, whatever the list's length."""
    ids = bindparam(name, type_=IdList())
    if dialect == "postgresql":
        return column == func.any(cast(ids, ARRAY(BigInteger)))
    each = func.json_each(ids).table_valued("value")
    return column.in_(select(each.c.value))


def each_id(dialect: str, name: str = "ids") -> tuple[ColumnElement[int], ColumnElement[int]]:
    """The ids bound (as a list) to `name`, as rows to select from: (id, its position
    in the list from 0). `unnest … WITH ORDINALITY` on PostgreSQL, `json_each` on
    SQLite: one statement inserts a row per id."""
    ids = bindparam(name, type_=IdList())
    if dialect == "postgresql":
        array = cast(ids, ARRAY(BigInteger))
        rows = func.unnest(array).table_valued("id", with_ordinality="ord").render_derived()
        return rows.c.id, rows.c.ord - 1
    each = func.json_each(ids).table_valued("value", "key")
    return each.c.value, each.c.key


@dataclass(frozen=True, slots=True)
class _CompiledSelect:
    sql: str
    #: (bind name, the value it was built with, its type's bind processor), in order.
    binds: tuple[tuple[str, Any, Processor], ...]
    positional: bool
    #: A SELECT's result processors, one per column.
    results: tuple[Processor, ...] = ()

    @classmethod
    def of(
        cls, statement: ClauseElement, dialect: Dialect, postcompile: bool = True
    ) -> _CompiledSelect:
        """`postcompile`: render literal IN lists (then every bind needs a value, such
        as `bindparam(name, None)`); without it a bind built without one is None."""
        options = {"render_postcompile": postcompile}
        sql = typed(SQLCompiler, statement.compile(dialect=dialect, compile_kwargs=options))
        if "POSTCOMPILE" in sql.string:
            raise ValueError("an expanding bind: spell the IN list as or_(==, …), or in_ids")
        built = sql.construct_params(_check=False)
        names = list(sql.positiontup or ()) if sql.positional else list(built)
        unknown = [name for name in names if name not in sql.binds]
        if unknown:
            raise ValueError(f"expanding binds {unknown}: spell the IN list as or_(==, …)")
        binds = tuple(
            (
                name,
                built[name],
                sql.binds[name].type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name in names
        )
        columns = statement.selected_columns if isinstance(statement, Select) else ()
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )
        return cls(sql.string, binds, sql.positional, results)

    def bind(self, values: Mapping[str, Any]) -> Any:
        known = {name for name, _, _ in self.binds}
        if not known.issuperset(values):
            raise ValueError(f"no bind named {sorted(set(values) - known)} in the SELECT")
        converted = []
        for name, built, process in self.binds:
            value = values.get(name, built)
            converted.append(value if process is None else process(value))
        if self.positional:
            return tuple(converted)
        return {name: value for (name, _, _), value in zip(self.binds, converted, strict=True)}


def _run(
    connection: Connection, sql: str, parameters: Any, fetch: int | None, many: bool = False
) -> list[tuple[Any, ...]]:
    """One driver call in the connection's transaction: up to `fetch` rows (None: all)."""
    with _driver_cursor(connection, sql, parameters) as cursor:
        if many:
            cursor.executemany(sql, parameters)
            return []
        cursor.execute(sql, parameters)
        if fetch == 0:
            return []
        rows = cursor.fetchall() if fetch is None else cursor.fetchmany(fetch)
    return [tuple(row) for row in rows]


def _run_counted(connection: Connection, sql: str, parameters: Any) -> int:
    """One driver call in the connection's transaction: the rows it changed."""
    with _driver_cursor(connection, sql, parameters) as cursor:
        cursor.execute(sql, parameters)
        return int(cursor.rowcount)


@contextmanager
def _driver_cursor(connection: Connection, sql: str, parameters: Any) -> Iterator[Any]:
    """A cursor of the connection's driver connection, closed after; the driver's errors
    become SQLAlchemy's (DBAPIError and its kinds, as the rest of the code expects),
    without the parameters, which are the customer's data."""
    dialect = connection.dialect
    dbapi = dialect.loaded_dbapi
    try:
        cursor = connection.connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
    except dbapi.Error as exc:
        raise DBAPIError.instance(
            sql, parameters, exc, dbapi.Error, hide_parameters=True, dialect=dialect
        ) from exc
