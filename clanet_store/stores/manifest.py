"""Manifest files: Parquet with the ``manifest`` layout and its version in the file metadata."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from clanet_store.errors import ClanetError
from clanet_store.schemas import load_schema, schema_version


def write_manifest(manifest: pl.DataFrame, path: str | Path) -> None:
    """Write a manifest as Parquet, cast to the schema file's types, atomically (tmp + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(manifest.to_arrow().cast(load_schema("manifest")), tmp)
    tmp.replace(path)


def read_manifest(path: str | Path) -> pl.DataFrame:
    """Read a manifest; refuse one written with a newer layout version than this code knows."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise ClanetError(f"{path}: cannot read manifest: {exc}") from None
    meta = table.schema.metadata or {}
    version = int(meta.get(b"version", b"0"))
    if meta.get(b"name") != b"manifest":
        raise ClanetError(f"{path}: not a clanet-store manifest")
    if version > schema_version("manifest"):
        raise ClanetError(
            f"{path}: manifest layout version {version} is newer than this clanet-store "
            f"understands ({schema_version('manifest')}); upgrade clanet-store"
        )
    return pl.from_arrow(table)
