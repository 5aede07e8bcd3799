"""Hot statements run on the database driver's own cursor.

SQLAlchemy builds every statement and renders it for the dialect. Executing through its
`Connection` then costs ~30 us of Python a statement on an idle core (result metadata, row
objects, type processing) and 80-200 us in the call loop, more than SQLite takes to run most
of what recall and recording send: a recorded call runs ~9 statements. A `Prepared` statement
is rendered once per dialect and run on the driver connection of the same SQLAlchemy
`Connection`, inside the transaction SQLAlchemy began, with the bound values passed through
the same type processors SQLAlchemy would apply. Values are always bound, never rendered.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect

__all__ = ["Prepared"]


class Prepared:
    """One statement, rendered for `dialect`; rows come back as named tuples."""

    def __init__(
        self, statement: Any, dialect: Dialect, column_keys: Sequence[str] | None = None
    ) -> None:
        # `column_keys`: the columns an INSERT sets. The others get the database's defaults:
        # SQLAlchemy's Python-side column defaults are not applied here.
        compiled = statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys else None
        )
        self.sql: str = compiled.string
        positions = compiled.positiontup
        self._positions: list[str] | None = list(positions) if positions is not None else None
        # Values SQLAlchemy fills in itself (an OFFSET 0, a literal's parameter).
        self._defaults: dict[str, Any] = dict(compiled.params)
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for bind in compiled.binds.values():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[compiled.bind_names[bind]] = processor
        self._row_type: Any = None

    def rows(self, conn: Connection, values: Mapping[str, Any] | None = None) -> list[Any]:
        cursor = _driver(conn).cursor()
        try:
            cursor.execute(self.sql, self._arguments(values))
            found = cursor.fetchall()
            make = self._rows_of(cursor)
        finally:
            cursor.close()
        return [make(row) for row in found]

    def scalar(self, conn: Connection, values: Mapping[str, Any] | None = None) -> Any:
        """The first column of the one row the statement returns."""
        cursor = _driver(conn).cursor()
        try:
            cursor.execute(self.sql, self._arguments(values))
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            raise LookupError(f"no row from: {self.sql}")
        return row[0]

    def run_many(self, conn: Connection, values: Sequence[Mapping[str, Any]]) -> None:
        cursor = _driver(conn).cursor()
        try:
            cursor.executemany(self.sql, [self._arguments(v) for v in values])
        finally:
            cursor.close()

    def _arguments(self, values: Mapping[str, Any] | None) -> Any:
        params = {**self._defaults, **values} if values else dict(self._defaults)
        for name, processor in self._processors.items():
            params[name] = processor(params[name])
        if self._positions is None:
            return params
        return [params[name] for name in self._positions]

    def _rows_of(self, cursor: Any) -> Callable[[Sequence[Any]], Any]:
        row_type = self._row_type
        if row_type is None:
            names = [column[0] for column in cursor.description]
            row_type = self._row_type = namedtuple("Row", names, rename=True)
        make: Callable[[Sequence[Any]], Any] = row_type._make
        return make


def _driver(conn: Connection) -> Any:
    return conn.connection.dbapi_connection
