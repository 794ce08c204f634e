"""Rows into records: the one row a query finds (or none), every row it finds, and a
dataclass from a row (or from another record)."""

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


def from_fields(
    kind: type[Dataclass], source: Any, *, numeric: Iterable[str] = (), **values: Any
) -> Dataclass:
    """The dataclass `kind` from `source`'s attributes named as its fields: a row's
    columns, or another record's fields.

    The `numeric` ones (PostgreSQL numeric, read as Decimal) become floats; `values`
    are taken instead of the attributes of their names.
    """
    taken = {
        field.name: getattr(source, field.name)
        for field in dataclasses.fields(kind)
        if field.name not in values
    }
    for name in numeric:
        taken[name] = float(taken[name])
    return kind(**taken, **values)
