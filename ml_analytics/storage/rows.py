"""Rows into records: the one row a query finds (or none), every row it finds, and a
dataclass from a row."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Record = TypeVar("Record")
Dataclass = TypeVar("Dataclass", bound="DataclassInstance")


async def one_or_none(
    connection: AsyncConnection,
    query: str,
    parameters: Mapping[str, Any],
    record: Callable[[Any], Record],
) -> Record | None:
    """`record` of the row the query finds, or None when it finds none."""
    row = (await connection.execute(text(query), dict(parameters))).one_or_none()
    return None if row is None else record(row)


async def all_of(
    connection: AsyncConnection,
    query: str,
    parameters: Mapping[str, Any],
    record: Callable[[Any], Record],
) -> list[Record]:
    """`record` of each row the query finds, in its order."""
    return [record(row) for row in await connection.execute(text(query), dict(parameters))]


def from_columns(
    kind: type[Dataclass], row: Any, *, numeric: Iterable[str] = (), **values: Any
) -> Dataclass:
    """The dataclass `kind` from the row's columns named as its fields.

    The `numeric` columns (PostgreSQL numeric, read as Decimal) become floats;
    `values` are taken instead of the columns of their names.
    """
    columns = {
        field.name: getattr(row, field.name)
        for field in dataclasses.fields(kind)
        if field.name not in values
    }
    for name in numeric:
        columns[name] = float(columns[name])
    return kind(**columns, **values)
