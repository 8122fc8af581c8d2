"""One way to read a store's tables: ``store.query(table).where(expr).select(*columns)``, then
``.to_polars()``, ``.to_arrow()`` or ``.to_numpy(column)`` (the lancedb / polars style).

A `Query` is an immutable description; nothing is read until one of the ``to_*`` methods runs.
Conditions are ``lancedb.expr`` expressions (typed and quoted by LanceDB), never strings: a value
with a quote in it cannot change a query. What a table name means (``patches``: committed rows
only; ``embeddings``: one encoder's rows) is the store's business: it hands the query its reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import pyarrow as pa
from lancedb.expr import Expr

# A table reader: (columns or None for all, condition or None) -> the rows, Arrow or polars.
Reader = Callable[[tuple[str, ...] | None, Expr | None], pa.Table | pl.DataFrame]


@dataclass(frozen=True)
class Query:
    """Rows of one table, filtered and projected lazily."""

    table: str
    reader: Reader
    condition: Expr | None = None
    columns: tuple[str, ...] | None = None

    def where(self, condition: Expr | None) -> Query:
        """Keep the rows that meet ``condition`` too (ANDed with earlier ones; None adds none)."""
        if condition is None:
            return self
        both = condition if self.condition is None else self.condition & condition
        return replace(self, condition=both)

    def select(self, *columns: str) -> Query:
        """Return only these columns, in this order."""
        return replace(self, columns=tuple(columns))

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table."""
        rows = self.reader(self.columns, self.condition)
        return rows.to_arrow() if isinstance(rows, pl.DataFrame) else rows

    def to_polars(self) -> pl.DataFrame:
        """The rows as a polars DataFrame (a vector column is an Array column)."""
        rows = self.reader(self.columns, self.condition)
        return rows if isinstance(rows, pl.DataFrame) else pl.from_arrow(rows)

    def to_numpy(self, column: str = "embedding") -> np.ndarray:
        """One column as NumPy: a vector column as an (n, dim) array without a copy (`vectors`),
        any other as an (n,) array."""
        table = self.select(column).to_arrow()
        if pa.types.is_fixed_size_list(table.schema.field(column).type):
            return vectors(table, column)
        return table.column(column).to_numpy()


def vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """The vectors of an Arrow table as an (n, dim) float32 array; no copy when the column is
    one chunk (LanceDB results usually are): flatten and to_numpy view the Arrow buffer."""
    array = table.column(column)
    chunk = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    return chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, array.type.list_size)
