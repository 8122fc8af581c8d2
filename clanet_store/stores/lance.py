"""LanceDB tables built from ``schemas/``: create, upsert without duplicates, safe deletes, reads.

Filters are built with ``lancedb.expr`` (typed, quoted by LanceDB), never by pasting strings into
SQL, so an id or a cell line name with a quote in it cannot change a query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import lancedb
import polars as pl
import pyarrow as pa
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.schemas import load_schema

_DELETE_CHUNK = 2000
# Lance file format of new tables with a vector (fixed-size list) column: 2.0 stores the vectors
# flat, which LanceDB reads 1.1-1.5x faster per CPU second than the 2.2 default's encoding
# (export-profiles' read of 1 M x 1536, BENCHMARKS.md). Readers of every format version read it;
# tables already written keep their format.
VECTOR_FILE_FORMAT = "2.0"


def open_table(
    db: lancedb.DBConnection, name: str, create: bool = False, schema: pa.Schema | None = None
) -> lancedb.table.Table:
    """Open table ``name`` (created from its schema when ``create``); check its columns.

    ``schema`` defaults to the schema file of the same name.
    """
    expected = schema if schema is not None else load_schema(name)
    try:  # no listing of the tables first: on object storage that is one more request
        table = db.open_table(name)
    except ValueError as exc:
        if "was not found" not in str(exc):
            raise
        if not create:
            message = f"{db.uri}: table {name!r} does not exist (nothing written yet?)"
            raise ClanetError(message) from None
        vectors = any(pa.types.is_fixed_size_list(f.type) for f in expected)
        options = {"new_table_data_storage_version": VECTOR_FILE_FORMAT} if vectors else None
        return db.create_table(name, schema=expected, storage_options=options)
    names = set(table.schema.names)  # one read: on object storage each is a request
    missing = [f.name for f in expected if f.name not in names]
    if missing:
        raise ClanetError(f"{db.uri}: table {name!r} lacks column(s) {', '.join(missing)}")
    return table


def to_arrow(rows: pa.Table | Sequence[dict], name: str | pa.Schema) -> pa.Table:
    """Rows as an Arrow table with exactly the schema of table ``name`` (or this schema)."""
    schema = load_schema(name) if isinstance(name, str) else name
    if isinstance(rows, pa.Table):
        return rows.select(schema.names).cast(schema)
    return pa.Table.from_pylist(list(rows), schema=schema)


def upsert(table: lancedb.table.Table, rows: pa.Table, key: str) -> None:
    """Insert or replace rows by ``key``; later rows win over earlier rows with the same key.

    ``merge_insert`` with a key repeated inside one batch would insert duplicate rows, so the
    batch is de-duplicated first.
    """
    if rows.num_rows == 0:
        return
    frame = pl.from_arrow(rows).unique(subset=key, keep="last", maintain_order=True)
    data = frame.to_arrow().cast(rows.schema)
    table.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(data)


def compact(table: lancedb.table.Table, deleted: bool = False) -> bool:
    """LanceDB's ``optimize`` (compaction, index update, cleanup of versions over 7 days old) of
    a table that has something to compact: more than one fragment, or ``deleted`` rows. Returns
    whether it ran.

    A table of one fragment and no deletions has nothing to merge, and no rows outside an index
    (an index implies earlier rows, so an append after it is a second fragment); ``optimize``
    there would only run its cleanup, which lists 9 prefixes of the table: 9 requests on
    object storage that delete nothing younger than 7 days. The cleanup runs with the next
    compaction instead, so old versions do not pile up.
    """
    if not deleted and table.stats()["fragment_stats"]["num_fragments"] <= 1:
        return False
    table.optimize()
    return True


def delete_where_in(table: lancedb.table.Table, column: str, values: Iterable[str]) -> int:
    """Delete rows whose ``column`` is one of ``values`` (in chunks); return how many were asked."""
    values = list(dict.fromkeys(values))
    for start in range(0, len(values), _DELETE_CHUNK):
        table.delete(col(column).isin(values[start : start + _DELETE_CHUNK]))
    return len(values)


def read(
    table: lancedb.table.Table,
    columns: Sequence[str] | None = None,
    where: Expr | str | None = None,
) -> pl.DataFrame:
    """A table (optionally filtered and projected) as a polars DataFrame."""
    if where is None:
        data = table.to_arrow()
        return pl.from_arrow(data.select(list(columns)) if columns else data)
    query = table.search().where(where)
    if columns:
        query = query.select(list(columns))
    return pl.from_arrow(query.limit(None).to_arrow())
