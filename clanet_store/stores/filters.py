"""User filters (``cell_line=A549``, ``batch!=b2``, ``rank<10``) as typed LanceDB expressions.

The value is converted to the column's Arrow type and handed to LanceDB as a literal
(``lancedb.expr.lit``), so quotes, ``%``, semicolons or SQL keywords in a value are matched
literally and can never change the query. Several filters combine with AND.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from lancedb.expr import Expr, col, lit

from clanet_store.errors import ClanetError

_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|<=|>=|=|<|>)\s*(.*?)\s*$", re.DOTALL)
_OPS = {
    "=": Expr.eq,
    "!=": Expr.ne,
    "<": Expr.lt,
    "<=": Expr.lte,
    ">": Expr.gt,
    ">=": Expr.gte,
}


def _value(text: str, kind: pa.DataType, column: str) -> object:
    try:
        if pa.types.is_integer(kind):
            return _in_range(int(text), kind, column, text)
        if pa.types.is_floating(kind):
            value = float(text)
            if math.isnan(value):
                raise ClanetError(f"filter on {column}: {text!r} is not a number (NaN)")
            return value
        if pa.types.is_boolean(kind):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
    except ValueError:
        raise ClanetError(f"filter on {column}: {text!r} is not a valid {kind}") from None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return text
    raise ClanetError(f"filter on {column}: columns of type {kind} cannot be filtered")


def _in_range(value: int, kind: pa.DataType, column: str, text: str) -> int:
    """``value`` if the integer column can hold it: a literal out of range would match nothing
    (or fail inside LanceDB) instead of telling the user."""
    info = np.iinfo(kind.to_pandas_dtype())
    if not info.min <= value <= info.max:
        raise ClanetError(
            f"filter on {column}: {text!r} is out of range for {kind} ({info.min} to {info.max})"
        )
    return value


def parse_filter(text: str, schema: pa.Schema) -> Expr:
    """One ``column<op>value`` filter (op: = != < <= > >=) typed by ``schema``."""
    m = _FILTER.match(text)
    if m is None:
        raise ClanetError(f"filter {text!r} is not of the form column=value (or !=, <, <=, >, >=)")
    column, op, raw = m.groups()
    if column not in schema.names:
        raise ClanetError(
            f"filter {text!r}: unknown column {column!r} (known: {', '.join(schema.names)})"
        )
    return _OPS[op](col(column), lit(_value(raw, schema.field(column).type, column)))


def parse_filters(texts: Iterable[str], schema: pa.Schema) -> Expr | None:
    """Several filters combined with AND; a text may also hold comma-separated filters
    (``cell_line=A549,batch=b1``). None when there is no filter."""
    return all_of(parse_filter(p, schema) for text in texts for p in _split(text))


def all_of(exprs: Iterable[Expr | None]) -> Expr | None:
    """The AND of the expressions that are not None; None when there are none."""
    combined = None
    for e in exprs:
        if e is not None:
            combined = e if combined is None else combined & e
    return combined


def _split(text: str) -> list[str]:
    """Split on commas that start a new ``column<op>`` filter (values may contain commas)."""
    pieces = re.split(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:!=|<=|>=|=|<|>))", text)
    return [p for p in pieces if p.strip()]
