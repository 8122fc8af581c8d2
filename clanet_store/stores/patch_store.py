"""The patch store: ``store.json``, a Zarr v3 patch array and LanceDB tables, in a folder or
under a prefix on object storage (``stores.location``).

Layout of a store directory::

    store.json       format name, store layout version, table layout versions, patch geometry
    patches.zarr/    Zarr v3 array (rows, 112, 112) uint8, Blosc/zstd, one chunk = 20 rows
    lance/           LanceDB database: tables ``images`` and ``patches`` (layouts in schemas/)
    .write.lock      advisory lock held by the one writer (see ``stores.lock``)
    .write.lease     on object storage: the one writer's lease (see ``stores.lock``)

Each image owns one *slot*: the 20-row block ``slot*20 .. slot*20+19`` of the patch array, which is
exactly one Zarr chunk, so writing an image is one aligned, whole-chunk write (no read-modify-write,
no two writers on one chunk). An image with fewer than 20 patches leaves the rest of its block zero;
the ``patches`` table says which rows hold patches. ``patches.zarr`` is a plain Zarr array and can
be opened with ``zarr.open_array`` directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import zarr
from lancedb.expr import Expr, col
from zarr.codecs import BloscCodec

from clanet_store.errors import ClanetError
from clanet_store.schemas import load_schema, schema_version
from clanet_store.stores import lance
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.query import Query

STORE_FORMAT = "clanet-store"
STORE_VERSION = 1
PATCH_SIZE = 112
SLOT_SIZE = 20
PIXEL_SIZE_UM = 1.24
TABLES = ("images", "patches")
ARRAY_SOURCE = "clanet-store ingest"
# What a writer may find in a folder it is asked to create a store in: its own lock file, and
# ``runs/`` (``clanet-store run --store DIR`` keeps its run state in DIR/runs/NAME by default and
# makes that folder before its ingest stage creates the store).
_CREATABLE = {".write.lock", ".write.lease", "runs"}
# How stale a table object may read: never (a long-lived store object sees every commit at once).
CONSISTENCY = timedelta(0)
# A patch row is committed when an ok images row has its image, content hash and slot.
_PATCH_KEYS = ("image_id", "content_hash", "row")
_VOUCHED = ["image_id", "content_hash", "slot"]
# Layouts whose tables exist once per vector width (``<layout>_<dim>``).
_SIZED_LAYOUTS = ("embeddings", "sequence_embeddings")


class StoreVersionError(ClanetError):
    """The store was written by a newer clanet-store with a layout this code does not know."""


def slot_batches(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Sorted array ``rows`` cut into batches of at least ``batch_size`` rows (the last may be
    shorter) that never split an image slot, so each Zarr chunk is read by one batch only
    (64-row reads over 20-row chunks read a fifth of the chunks twice: one more request each
    on object storage)."""
    rows = np.asarray(rows)
    batches: list[np.ndarray] = []
    start = 0
    for cut in np.flatnonzero(np.diff(rows // SLOT_SIZE)) + 1:  # where a new slot begins
        if cut - start >= batch_size:
            batches.append(rows[start:cut])
            start = int(cut)
    if start < len(rows):
        batches.append(rows[start:])
    return batches


def table_layout(table: str) -> str:
    """The schema file a table follows: ``embeddings_<dim>`` tables follow ``embeddings``,
    ``sequence_embeddings_<dim>`` tables ``sequence_embeddings``."""
    base, _, dim = table.rpartition("_")
    return base if base in _SIZED_LAYOUTS and dim.isdigit() else table


def write_meta(path: str | Path | StoreLocation, meta: dict) -> None:
    """Replace store.json atomically (locally: write, then rename)."""
    StoreLocation.parse(path).write_bytes("store.json", json.dumps(meta, indent=2).encode())


def read_meta(path: str | Path | StoreLocation) -> dict:
    """``store.json`` of a store, checked: one-line errors naming the file and pointing at
    ``repair`` when it is not a JSON object of the expected shape (empty, garbage, ``[]``, ...)."""
    path = StoreLocation.parse(path)
    meta_path = path.child("store.json")
    try:
        meta = json.loads(path.read_bytes("store.json").decode())
        problem = _meta_problem(meta)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"not valid JSON ({_short(exc)})"
    if problem:
        raise ClanetError(
            f"{meta_path}: {problem}; run clanet-store repair --store {path} to rebuild it "
            "from the patch array and the tables"
        )
    _check_meta(path, meta)
    return meta


def _short(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:80] or type(exc).__name__


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed store.json, or None."""
    if not isinstance(meta, dict):
        return f"holds a JSON {type(meta).__name__}, not an object"
    for key, kind in (("store_version", int), ("patch_size", int), ("slot_size", int)):
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key} is {value!r}, not an integer"
    tables = meta.get("tables")
    if not isinstance(tables, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in tables.values()
    ):
        return "tables is not an object of integer layout versions"
    if not isinstance(meta.get("exports", []), list):
        return "exports is not a list"
    if (meta["patch_size"], meta["slot_size"]) != (PATCH_SIZE, SLOT_SIZE):
        geometry = f"{meta['patch_size']} px / {meta['slot_size']} rows"
        return f"patch geometry {geometry} is not {PATCH_SIZE} px / {SLOT_SIZE} rows"
    return None


def _check_meta(path: StoreLocation, meta: dict) -> None:
    if meta.get("format") != STORE_FORMAT:
        raise ClanetError(
            f"{path}: not a clanet-store store (store.json format is not {STORE_FORMAT})"
        )
    if meta.get("store_version", 0) > STORE_VERSION:
        raise StoreVersionError(
            f"{path}: store layout version {meta['store_version']} is newer than this clanet-store "
            f"understands ({STORE_VERSION}); upgrade clanet-store to read it"
        )
    for name, version in meta.get("tables", {}).items():
        known = schema_version(table_layout(name))
        if version > known:
            raise StoreVersionError(
                f"{path}: table {name!r} has layout version {version}, newer than this "
                f"clanet-store understands ({known}); upgrade clanet-store to read it"
            )


def missing_meta_message(path: StoreLocation) -> str:
    """Why a folder (or prefix) without store.json is not a store, and what to do."""
    if path.is_local and not path.local_path.is_dir():
        return f"{path}: no clanet-store store here (no such folder)"
    found = _store_parts(path)
    if found:
        return (
            f"{path}: store.json is missing but the folder holds {', '.join(found)}; "
            f"run clanet-store repair --store {path} to rebuild it"
        )
    return f"{path}: no clanet-store store here (store.json missing)"


def _store_parts(path: StoreLocation) -> list[str]:
    entries = set(path.entries())
    return [name for name in ("patches.zarr", "lance/") if name.rstrip("/") in entries]


def check_creatable(path: StoreLocation) -> None:
    """Refuse to create a store in anything but a new or empty folder or prefix (one line: what
    was found, what to do); a store that lost its store.json is repaired, never overwritten. On
    object storage this is the first request: a wrong bucket, endpoint or credentials fail here."""
    if path.is_local and path.local_path.exists() and not path.local_path.is_dir():
        raise ClanetError(f"{path}: exists and is not a folder; choose a new or empty folder")
    if _store_parts(path):
        raise ClanetError(missing_meta_message(path))
    others = [name for name in path.entries() if name not in _CREATABLE]
    if others:
        shown = ", ".join(repr(n) for n in others[:3]) + (" ..." if len(others) > 3 else "")
        raise ClanetError(
            f"{path}: not a clanet-store store and not empty (holds {shown}); "
            "choose a new or empty folder for a new store"
        )


class PatchStore:
    """A store: store.json, its tables (read with `query`) and the patch array (pixels as NumPy
    arrays); the writer side (slots, tables, exports) for ``ingest``."""

    def __init__(
        self,
        path: str | Path | StoreLocation,
        create: bool = False,
        extractor: dict | None = None,
        consistency: timedelta | None = CONSISTENCY,
    ):
        """Open the store at ``path`` (a folder or an object-storage URL, `StoreLocation`); with
        ``create`` (writer only: hold the writer lock) make one when the folder is new or empty.
        A folder with anything else in it is never overwritten (see `check_creatable`).

        ``consistency``: how stale an open table may read. ``None`` (never look for newer
        versions) is for a writer that holds the lock and opens its tables through `table`
        only: no other process commits then, and a table handle sees its own commits. It saves
        a version check per read, a LIST request on object storage (docs/cluster.md)."""
        self.path = StoreLocation.parse(path)
        if not self.path.exists("store.json"):
            if not create:
                raise ClanetError(missing_meta_message(self.path))
            check_creatable(self.path)
            self._create(extractor or {})
        self.meta = read_meta(self.path)
        self.db = self.path.lance(read_consistency_interval=consistency)
        self._tables: dict[str, Any] = {}
        self._array: zarr.Array | None = None

    def _create(self, extractor: dict) -> None:
        if self.path.is_local:
            self.path.local_path.mkdir(parents=True, exist_ok=True)
        created_at = datetime.now(UTC).isoformat()
        zarr.create_array(
            store=self.path.zarr_store("patches.zarr"),
            shape=(0, PATCH_SIZE, PATCH_SIZE),
            chunks=(SLOT_SIZE, PATCH_SIZE, PATCH_SIZE),
            dtype="uint8",
            # Level 1: same ratio as level 3 on patches (1.25-1.41x), 5x less CPU for the writer.
            compressors=BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"),
            fill_value=0,
            dimension_names=("patch", "y", "x"),
            attributes={
                "description": "CCS brightfield patches, grey uint8; rows are listed in the "
                "LanceDB table 'patches' (column row)",
                "pixel_size_um": PIXEL_SIZE_UM,
                "patch_size": PATCH_SIZE,
                "rows_per_image_slot": SLOT_SIZE,
                "source": ARRAY_SOURCE,
                "extractor": extractor,
                # Copies of store.json's created_at and exports, for `repair`.
                "created_at": created_at,
                "exports": [],
            },
        )
        db = self.path.lance()
        for name in TABLES:
            lance.open_table(db, name, create=True)
        meta = {
            "format": STORE_FORMAT,
            "store_version": STORE_VERSION,
            "tables": {name: schema_version(name) for name in TABLES},
            "patch_size": PATCH_SIZE,
            "slot_size": SLOT_SIZE,
            "created_at": created_at,
        }
        write_meta(self.path, meta)  # the store exists once this file does

    # --- tables -------------------------------------------------------------------------------

    def table(self, name: str, create: pa.Schema | None = None):
        """The LanceDB table ``name``, opened once (tables do not pickle: one per process); with
        ``create`` (writer only), made with that schema when it does not exist."""
        if name not in self._tables:
            layout = create or load_schema(table_layout(name))  # vector sizes vary
            self._tables[name] = lance.open_table(self.db, name, create is not None, layout)
        return self._tables[name]

    def query(self, table: str) -> Query:
        """Rows of ``table`` (``images``, ``patches``, ``qc``, ...) as a `Query`. ``patches``
        gives the committed rows only: rows whose ``(image_id, content_hash, slot)`` an ``images``
        row with status ok vouches for. Rows of an ingest still running, or killed between its
        patches and images commits, are invisible there (`uncommitted_patches` lists them)."""
        if table == "patches":
            return Query(table, self._committed_patches)
        return Query(table, partial(self._read, table))

    def _read(self, name: str, columns: Sequence[str] | None, where: Expr | None) -> pl.DataFrame:
        return lance.read(self.table(name), columns, where)

    def _committed_patches(self, columns: Sequence[str] | None, where: Expr | None) -> pl.DataFrame:
        wanted = list(columns) if columns else None
        read_cols = None if wanted is None else list(dict.fromkeys([*wanted, *_PATCH_KEYS]))
        rows = _with_slot(lance.read(self.table("patches"), read_cols, where))
        committed = rows.join(self._committed(), on=_VOUCHED, how="semi").drop("slot")
        return committed.select(wanted) if wanted is not None else committed

    def uncommitted_patches(self, columns: Sequence[str] = ("patch_id",)) -> pl.DataFrame:
        """Rows of the ``patches`` table that no ``images`` row with status ok vouches for (an
        image re-extracted with other parameters keeps its content hash but gets a new slot)."""
        rows = lance.read(self.table("patches"), list(dict.fromkeys([*columns, *_PATCH_KEYS])))
        stale = _with_slot(rows).join(self._committed(), on=_VOUCHED, how="anti")
        return stale.select(list(columns))

    def _committed(self) -> pl.DataFrame:
        """``(image_id, content_hash, slot)`` of the images with status ok: the commit markers."""
        images = self._read("images", ["image_id", "content_hash", "slot", "status"], None)
        ok = images.filter(pl.col("status") == "ok")
        return ok.select("image_id", "content_hash", pl.col("slot").cast(pl.Int64))

    # --- pixels -------------------------------------------------------------------------------

    @property
    def array(self) -> zarr.Array:
        """The Zarr patch array (rows, 112, 112) uint8."""
        if self._array is None:
            array = zarr.open_array(self.path.zarr_store("patches.zarr"), mode="r+")
            # Every write is a whole image slot, almost never all zero: Zarr's check for empty
            # chunks (to skip writing them) cost 0.6-2.2 ms of CPU per slot write, which took
            # 3.3-7.6 ms in all (benchmarks/bench_ingest_parts.py, four runs on a noisy machine).
            self._array = array.with_config({"write_empty_chunks": True})
        return self._array

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Patch pixels for array rows, in the order given (one read per chunk touched)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, PATCH_SIZE, PATCH_SIZE), np.uint8)
        unique, inverse = np.unique(rows, return_inverse=True)
        return self.array.oindex[unique][inverse]

    def pixels(self, patch_ids: Sequence[str]) -> np.ndarray:
        """Patch pixels (n, 112, 112) uint8 for these patch ids, in the order given."""
        ids = list(patch_ids)
        query = self.query("patches").where(col("patch_id").isin(ids))
        found = query.select("patch_id", "row").to_polars()
        lookup = dict(zip(found["patch_id"], found["row"], strict=True))
        missing = [p for p in ids if p not in lookup]
        if missing:
            raise ClanetError(f"{self.path}: unknown patch id(s) {', '.join(missing[:5])}")
        return self.read_rows(np.array([lookup[p] for p in ids], dtype=np.int64))

    # --- writer side (call only while holding the writer lock) -------------------------------

    def ensure_slots(self, n_slots: int) -> None:
        """Grow (or shrink) the patch array to exactly ``n_slots`` image slots."""
        shape = (n_slots * SLOT_SIZE, PATCH_SIZE, PATCH_SIZE)
        if self.array.shape != shape:
            self.array.resize(shape)

    def write_slot(self, slot: int, patches: np.ndarray) -> np.ndarray:
        """Write an image's patches as one whole chunk; return the array rows they occupy."""
        block = np.zeros((SLOT_SIZE, PATCH_SIZE, PATCH_SIZE), np.uint8)
        block[: len(patches)] = patches
        start = slot * SLOT_SIZE
        self.array[start : start + SLOT_SIZE] = block
        return np.arange(start, start + len(patches), dtype=np.int64)

    def delete_embeddings(self, column: str, values: Sequence[str]) -> None:
        """Delete the rows of every embeddings table whose ``column`` is one of ``values`` (writer
        only): embeddings exist only for committed patches, so no read ever returns others."""
        for name in self.meta.get("tables", {}):
            if table_layout(name) == "embeddings" and values:
                lance.delete_where_in(self.table(name), column, values)

    def register_table(self, name: str) -> None:
        """Record a new table and the version of its layout in store.json (writer only)."""
        tables = self.meta.setdefault("tables", {})
        version = schema_version(table_layout(name))
        if tables.get(name) == version:
            return
        tables[name] = version
        write_meta(self.path, self.meta)

    def record_export(self, root: str | Path) -> None:
        """Remember an export root ingested into this store (writer only): image paths are
        relative to their export root, and `source_file` finds the originals again."""
        roots = self.meta.setdefault("exports", [])
        resolved = str(Path(root).resolve())
        if resolved not in roots:
            roots.append(resolved)
            self.array.attrs["exports"] = roots  # a copy, for `repair`
            write_meta(self.path, self.meta)

    def source_file(self, path: str, roots: Sequence[str | Path] = ()) -> Path | None:
        """The original file of an image (its ``path`` column): under ``roots``, then under the
        export roots this store ingested from, newest first; None if it is nowhere."""
        for root in (*roots, *reversed(self.meta.get("exports", []))):
            candidate = Path(root) / path
            if candidate.is_file():
                return candidate
        return None

    def size_on_disk(self) -> int:
        """Bytes used by the store (folder or prefix)."""
        return self.path.size()


def _with_slot(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with the image slot of each patch row (``row // SLOT_SIZE``)."""
    return rows.with_columns(slot=(pl.col("row") // SLOT_SIZE).cast(pl.Int64))
