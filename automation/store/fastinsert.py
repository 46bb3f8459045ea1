"""INSERTs for the webhook's hot path: compiled once, run on the driver's cursor.

A webhook's transaction holds SQLite's only write lock, so every microsecond spent in
it is one the other gunicorn worker waits, and the ingest benchmark showed the
webhook's whole extra cost over a bare Flask app sat in storing it. SQLAlchemy's
`Connection.execute` spends about 100 µs of Python per statement (execution context,
result object, events) on an INSERT that SQLite does in 20.

So SQLAlchemy still does what it is good at: it compiles the statement from the
models, once per dialect, and every value goes through the column type's own bind
processor (what `execute` would store, byte for byte). Only the per-call machinery is
skipped. A driver error is re-raised as SQLAlchemy's `DBAPIError` subclass with its
parameters hidden, so callers keep catching `SQLAlchemyError` and no webhook body or
token reaches a log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Insert
from sqlalchemy.exc import DBAPIError

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
        parameters = compiled.bind(values)
        dbapi = dialect.loaded_dbapi
        try:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(compiled.sql, parameters)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except dbapi.Error as exc:
            raise DBAPIError.instance(
                compiled.sql, parameters, exc, dbapi.Error, hide_parameters=True, dialect=dialect
            ) from exc
        return None if row is None else tuple(row)

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the INSERT (without RETURNING) once per row, in one driver call."""
        if not rows:
            return
        dialect = connection.dialect
        compiled = self._compiled(dialect, rows[0])
        parameters = [compiled.bind(row) for row in rows]
        dbapi = dialect.loaded_dbapi
        try:
            cursor = connection.connection.cursor()
            try:
                cursor.executemany(compiled.sql, parameters)
            finally:
                cursor.close()
        except dbapi.Error as exc:
            raise DBAPIError.instance(
                compiled.sql, parameters, exc, dbapi.Error, hide_parameters=True, dialect=dialect
            ) from exc

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
