"""``repair``: rebuild a lost or corrupt ``store.json`` from the patch array and the tables.

``store.json`` only repeats facts the store holds elsewhere: the format and patch geometry (the
Zarr array's attributes and shape), the tables and their layouts (the LanceDB database, checked
against ``schemas/``), the creation time and export roots (copies in the array's attributes).
One entry is left out: ``sequence_sources``, the versions of the tables the sequence vectors were
last pooled from (a cache; without it the next ``authenticate`` or ``encode`` re-checks the
sequence vectors and records it again). Before writing it, the array and the tables must agree:
every committed image has a slot inside the array whose chunk was written, no two images share a
slot, and its patch rows lie in its slot, as many as its ``patch_count``. Anything else is
refused, naming the first disagreement, and nothing is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import polars as pl
import zarr

from clanet_store.errors import ClanetError
from clanet_store.schemas import load_schema, schema_version
from clanet_store.stores import lance
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.lock import writer_lock
from clanet_store.stores.patch_store import (
    ARRAY_SOURCE,
    PATCH_SIZE,
    SLOT_SIZE,
    STORE_FORMAT,
    STORE_VERSION,
    TABLES,
    read_meta,
    table_layout,
    write_meta,
)


@dataclass(frozen=True)
class RepairReport:
    """What ``repair`` found and wrote (the JSON keys of ``clanet-store repair --format json``)."""

    store: str
    tables: dict[str, int]
    images: int
    patches: int
    exports: list[str]
    created_at: str
    replaced: str | None  # where the corrupt store.json was kept, if there was one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def repair_store(path: str | Path | StoreLocation) -> RepairReport:
    """Rebuild ``path/store.json`` (under the writer lock) after checking that the patch array
    and the tables agree; a corrupt store.json is kept as ``store.json.corrupt``."""
    path = StoreLocation.parse(path)
    if path.is_local and not path.local_path.is_dir():
        raise ClanetError(f"{path}: no such folder")
    meta_path = path.child("store.json")
    with writer_lock(path):
        if path.exists("store.json"):
            try:
                read_meta(path)
            except ClanetError:
                pass  # corrupt: rebuilt below
            else:
                raise ClanetError(f"{meta_path}: is readable and valid; nothing to repair")
        array = _open_array(path)
        db = path.lance()
        tables = _table_versions(db)
        images, patches = _check_agreement(path, array, db)
        attrs = dict(array.attrs)
        meta = {
            "format": STORE_FORMAT,
            "store_version": STORE_VERSION,
            "tables": tables,
            "patch_size": PATCH_SIZE,
            "slot_size": SLOT_SIZE,
            "created_at": attrs.get("created_at") or datetime.now(UTC).isoformat(),
        }
        if attrs.get("exports"):
            meta["exports"] = list(attrs["exports"])
        replaced = None
        if path.exists("store.json"):
            replaced = path.child("store.json.corrupt")
            path.write_bytes("store.json.corrupt", path.read_bytes("store.json"))
        write_meta(path, meta)
    return RepairReport(
        store=str(path),
        tables=tables,
        images=images,
        patches=patches,
        exports=meta.get("exports", []),
        created_at=meta["created_at"],
        replaced=replaced,
    )


def _open_array(path: StoreLocation) -> zarr.Array:
    where = path.child("patches.zarr")
    try:
        array = zarr.open_array(path.zarr_store("patches.zarr"), mode="r")
    except Exception as exc:  # zarr raises several types for a missing or broken array
        raise ClanetError(
            f"{where}: cannot open the patch array ({type(exc).__name__}); cannot repair"
        ) from None
    attrs = array.attrs
    expected = {
        "source": ARRAY_SOURCE,
        "patch_size": PATCH_SIZE,
        "rows_per_image_slot": SLOT_SIZE,
    }
    wrong = [k for k, v in expected.items() if attrs.get(k) != v]
    if (
        wrong
        or array.shape[1:] != (PATCH_SIZE, PATCH_SIZE)
        or array.chunks != (SLOT_SIZE, PATCH_SIZE, PATCH_SIZE)
        or str(array.dtype) != "uint8"
    ):
        raise ClanetError(
            f"{where}: not a clanet-store patch array (shape {array.shape}, chunks "
            f"{array.chunks}, attributes {', '.join(wrong) or 'ok'}); cannot repair"
        )
    return array


def _table_versions(db: lancedb.DBConnection) -> dict[str, int]:
    """Each table's layout version, after checking its columns against ``schemas/``."""
    names = db.list_tables(limit=10_000).tables
    missing = [t for t in TABLES if t not in names]
    if missing:
        raise ClanetError(f"{db.uri}: table(s) {', '.join(missing)} missing; cannot repair")
    versions = {}
    for name in [*TABLES, *sorted(set(names) - set(TABLES))]:
        layout = table_layout(name)
        version = schema_version(layout)
        if version == 0:
            raise ClanetError(f"{db.uri}: table {name!r} is not a clanet-store table; not repaired")
        lance.open_table(db, name, schema=load_schema(layout))  # checks the columns
        versions[name] = version
    return versions


def _check_agreement(
    path: StoreLocation, array: zarr.Array, db: lancedb.DBConnection
) -> tuple[int, int]:
    """Committed images and their patch rows against the array; (images, patches) if they agree."""
    images = lance.read(
        db.open_table("images"),
        ["image_id", "content_hash", "status", "slot", "patch_count", "path"],
    )
    ok = images.filter(pl.col("status") == "ok")
    patches = lance.read(db.open_table("patches"), ["image_id", "content_hash", "row"])
    committed = patches.join(ok.select("image_id", "content_hash"), on=["image_id", "content_hash"])
    per_image = committed.group_by("image_id").agg(
        n=pl.len(), lo=pl.col("row").min(), hi=pl.col("row").max()
    )
    joined = ok.join(per_image, on="image_id", how="left").with_columns(pl.col("n").fill_null(0))
    rows = array.shape[0]

    def refuse(what: str, frame: pl.DataFrame) -> None:
        if frame.height:
            raise ClanetError(
                f"{path}: the patch array and the tables disagree: {what} "
                f"(e.g. {frame['path'][0]!r}, {frame.height} image(s)); cannot repair"
            )

    refuse("images without a slot", joined.filter(pl.col("slot").is_null()))
    refuse(
        "slots beyond the end of the patch array",
        joined.filter(pl.col("slot") * SLOT_SIZE + pl.col("patch_count") > rows),
    )
    refuse("two images in one slot", joined.filter(pl.col("slot").is_duplicated()))
    refuse("patch rows unlike patch_count", joined.filter(pl.col("n") != pl.col("patch_count")))
    refuse(
        "patch rows outside the image's slot",
        joined.filter(
            (pl.col("n") > 0)
            & (
                (pl.col("lo") < pl.col("slot") * SLOT_SIZE)
                | (pl.col("hi") >= (pl.col("slot") + 1) * SLOT_SIZE)
            )
        ),
    )
    filled = joined.filter(pl.col("patch_count") > 0)
    unwritten = [
        slot
        for slot in filled["slot"].to_list()
        if not path.exists(f"patches.zarr/{array.metadata.encode_chunk_key((slot, 0, 0))}")
    ]
    refuse(
        "slots whose pixels were never written (a recreated, empty patch array?)",
        filled.filter(pl.col("slot").is_in(unwritten)),
    )
    return ok.height, committed.height
