"""Load the versioned table layouts in ``schemas/`` (the source of truth) as Arrow schemas."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pyarrow as pa

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

_SIMPLE = {
    "string": pa.string(),
    "bool": pa.bool_(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "timestamp[s]": pa.timestamp("s"),
    "timestamp[us]": pa.timestamp("us"),
    "binary": pa.binary(),
}
_FIXED_LIST = re.compile(r"^fixed_size_list<(\w+),\s*(\d+)>$")


def arrow_type(text: str) -> pa.DataType:
    """The Arrow type for a type name used in the schema files."""
    if text in _SIMPLE:
        return _SIMPLE[text]
    m = _FIXED_LIST.match(text)
    if m and m.group(1) in _SIMPLE:
        return pa.list_(_SIMPLE[m.group(1)], int(m.group(2)))
    raise ValueError(f"unknown type {text!r} in a schema file")


@cache
def load_schema(name: str) -> pa.Schema:
    """The Arrow schema of table ``name``; metadata holds ``name`` and ``version``."""
    path = SCHEMA_DIR / f"{name}.json"
    spec = json.loads(path.read_text())
    fields = [
        pa.field(
            f["name"], arrow_type(f["type"]), nullable=f["nullable"], metadata={"doc": f["doc"]}
        )
        for f in spec["fields"]
    ]
    return pa.schema(fields, metadata={"name": spec["name"], "version": str(spec["version"])})


def schema_version(name: str) -> int:
    """The version number of table ``name``'s layout; 0 for a table this code does not know."""
    if not (SCHEMA_DIR / f"{name}.json").exists():
        return 0
    return int(load_schema(name).metadata[b"version"])
