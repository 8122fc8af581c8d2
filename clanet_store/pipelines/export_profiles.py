"""``export-profiles``: one model's embeddings as profiles for pycytominer (Parquet) or scanpy
(AnnData ``.h5ad``), one row per patch, image or sequence.

Every key becomes metadata (``Metadata_<key>`` columns in Parquet, pycytominer's convention; the
``obs`` frame in AnnData) and the embedding the features (``embedding_0000`` ... columns in
Parquet; ``X`` in AnnData, the feature names in ``var``). The image and sequence levels are those
of ``evaluate-encoder`` (``learn.encoder_metrics.level_rows``): an image is the mean of its patches
of CCS rank < ``top_k``, a sequence the mean of its images.

Streamed in chunks, so memory stays bounded whatever the store's size: the patch level reads the
embeddings table batch by batch; the image and sequence levels read whole sequences at a time
(their keys first, then the vectors of a group of sequences, ``rank < top_k`` only). The file is
written under a temporary name and renamed when complete: a failed or interrupted export leaves
no partial file, and a re-run replaces the file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.imaging.jit import kernel
from clanet_store.learn.encoder_metrics import LEVELS, level_rows
from clanet_store.pipelines.encode import META_COLUMNS
from clanet_store.pipelines.prefetch import prefetched
from clanet_store.progress import Progress
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.query import vectors

FORMATS = ("parquet", "anndata")
METADATA_PREFIX = "Metadata_"
FEATURE_PREFIX = "embedding_"
# Rows per chunk: 32,768 x 1536 float32 = 201 MB of vectors, a few copies of which are alive at
# once (the Arrow batch, the column-major copy for Parquet).
CHUNK_ROWS = 32_768
TRANSPOSE_TILE = 32
# Chunks read ahead by a background thread while the current one is written (LanceDB's reader,
# NumPy's copies and the writers release the GIL): one or two more chunks in memory.
PREFETCH_CHUNKS = 1
# The metadata of each level: the keys every row of the level shares (``path`` is the image's
# file, from the images table; null where the store has no images row for it).
LEVEL_METADATA = {
    "patch": (*META_COLUMNS, "path"),
    "image": (*(c for c in META_COLUMNS if c not in ("patch_id", "rank", "density")), "path"),
    "sequence": ("sequence_id", "cell_line", "batch", "experiment", "well", "location", "crop"),
}
# The row key of each level: the index of AnnData's obs.
LEVEL_ID = {"patch": "patch_id", "image": "image_id", "sequence": "sequence_id"}


@dataclass(frozen=True)
class ProfileExport:
    """What one export wrote (the JSON of ``export-profiles --print json``)."""

    path: str
    format: str
    level: str
    model_id: str
    random_init: bool
    top_k: int
    rows: int
    features: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": self.rows_per_s}


def feature_names(dim: int) -> list[str]:
    """The feature column names of a ``dim``-d embedding (``embedding_0000`` ...)."""
    width = max(4, len(str(dim - 1)))
    return [f"{FEATURE_PREFIX}{i:0{width}d}" for i in range(dim)]


Chunks = Iterator[tuple[np.ndarray, pl.DataFrame, int]]


def _patch_chunks(store: EmbeddingStore, model_id: str, chunk_rows: int) -> Chunks:
    """Every patch embedding of the model, ``chunk_rows`` at a time, in storage order; with the
    patch rows read."""
    table = store.table(store.encoder(model_id).table)
    query = (
        table.search()
        .where(col("model_id") == model_id)
        .select([*META_COLUMNS, "embedding"])
        .limit(None)
    )
    for batch in query.to_batches(chunk_rows):
        if batch.num_rows:
            chunk = pa.Table.from_batches([batch])
            keys = _owned(chunk.select(list(META_COLUMNS)))
            yield vectors(chunk), pl.from_arrow(keys), batch.num_rows


def _owned(table: pa.Table) -> pa.Table:
    """A copy of ``table`` in buffers of its own. LanceDB returns a batch's columns as views of
    one allocation that also holds the vectors, so keeping a chunk's keys (AnnData's ``obs`` is
    written at the end) kept its vectors alive: peak RSS 7.7 GB for 1 M x 1536 (measured)."""
    return table.take(np.arange(table.num_rows))


def _sequence_groups(keys: pl.DataFrame, chunk_rows: int) -> list[list[str]]:
    """Sequence ids in groups of about ``chunk_rows`` patch rows (a sequence is never split)."""
    sizes = keys.group_by("sequence_id").len().sort("sequence_id")
    group = (sizes["len"].cum_sum() - sizes["len"]) // chunk_rows
    return [
        part["sequence_id"].to_list()
        for part in sizes.with_columns(group=group).partition_by("group", maintain_order=True)
    ]


def _level_chunks(
    store: EmbeddingStore, model_id: str, level: str, top_k: int, chunk_rows: int
) -> Chunks:
    """The image or sequence rows of whole sequences at a time, with each level's metadata; with
    the patch rows read."""
    top = store.query("embeddings", model_id).where(_top(top_k))
    keys = top.select("sequence_id").to_polars()
    metadata = [c for c in LEVEL_METADATA[level] if c != "path"]
    for sequences in _sequence_groups(keys, chunk_rows):
        chunk = top.where(col("sequence_id").isin(sequences))
        table = chunk.select(*META_COLUMNS, "embedding").to_arrow()
        patches = pl.from_arrow(table.drop_columns(["embedding"]))
        x, rows = level_rows(vectors(table), patches, top_k)[level]
        key = LEVEL_ID[level]
        labels = patches.unique(key, keep="first", maintain_order=True).select(metadata)
        rows = rows.select(key).join(labels, on=key, how="left", maintain_order="left")
        yield x, rows, table.num_rows


def _top(top_k: int) -> Expr:
    """The patches that image means average: CCS rank below ``top_k``."""
    return col("rank") < top_k


def _with_paths(paths: pl.DataFrame | None, level: str, keys: pl.DataFrame) -> pl.DataFrame:
    """The level's metadata in order, with each image's path (from ``paths``: image_id, path)
    where the level has images."""
    if paths is not None:
        keys = keys.join(paths, on="image_id", how="left", maintain_order="left")
    return keys.select(LEVEL_METADATA[level])


def feature_columns(x: np.ndarray, out: np.ndarray | None = None) -> list[pa.Array]:
    """The columns of an (n, dim) matrix as ``dim`` float32 Arrow arrays, views of one transposed
    copy (`_transpose_into`), into ``out`` (a (dim, n) float32 buffer) when given."""
    n, dim = x.shape
    columns = np.empty((dim, n), np.float32) if out is None else out
    _transpose_into(np.ascontiguousarray(x, dtype=np.float32), columns, TRANSPOSE_TILE)
    buffer = pa.py_buffer(columns)
    size = n * 4
    return [
        pa.Array.from_buffers(pa.float32(), n, [None, buffer.slice(j * size, size)])
        for j in range(dim)
    ]


@kernel(nogil=True)
def _transpose_into(x: np.ndarray, out: np.ndarray, tile: int) -> None:
    """``out[j, i] = x[i, j]`` in ``tile`` x ``tile`` blocks that stay in cache: 0.13 s of CPU for
    32,768 x 1536 where NumPy's copy in 256-row blocks took 0.25 s and ``np.asfortranarray``
    0.48-0.71 s (measured, same load); releases the GIL, so the next chunk is read meanwhile."""
    n, dim = x.shape
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j0 in range(0, dim, tile):
            for j in range(j0, min(j0 + tile, dim)):
                for i in range(i0, i1):
                    out[j, i] = x[i, j]


class _ParquetWriter:
    """``Metadata_<key>`` columns then one float32 column per embedding dimension."""

    def __init__(self, path: Path, metadata: pa.Schema, dim: int):
        self.features = feature_names(dim)
        fields = [f.with_name(METADATA_PREFIX + f.name) for f in metadata]
        # Features are never null: non-nullable columns carry no definition levels, which took
        # the writer from 0.34 to 0.12 s of CPU per 32,768 x 1536 chunk (measured).
        features = [pa.field(n, pa.float32(), nullable=False) for n in self.features]
        self.schema = pa.schema([*fields, *features])
        # Dictionaries and statistics for the metadata only: random-looking floats gain nothing
        # from them and the writer would spend most of its time trying.
        names = [f.name for f in fields]
        self.buffer = np.empty((0, 0), np.float32)
        self.writer = pq.ParquetWriter(
            path,
            self.schema,
            compression="none",
            use_dictionary=names,
            write_statistics=names,
        )

    def write(self, x: np.ndarray, keys: pl.DataFrame) -> None:
        # One transpose buffer for every chunk of the same size: a fresh one cost the kernel
        # zeroing 200 MB of new pages per chunk.
        if self.buffer.shape != x.shape[::-1]:
            self.buffer = np.empty(x.shape[::-1], np.float32)
        arrays = [*keys.to_arrow().columns, *feature_columns(x, self.buffer)]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class _AnnDataWriter:
    """An ``.h5ad`` file: ``X`` grown chunk by chunk with h5py, ``obs`` / ``var`` written by
    anndata's own element writer at the end (AnnData's on-disk format, encoding 0.1.0)."""

    def __init__(self, path: Path, metadata: pa.Schema, dim: int, index: str):
        try:
            import h5py
            from anndata.io import write_elem
        except ImportError as exc:
            raise ClanetError(
                f"--format anndata needs the anndata package ({exc.name} is missing): "
                "pip install 'clanet-store[profiles]'"
            ) from None
        self.write_elem, self.index, self.dim = write_elem, index, dim
        self.file = h5py.File(path, "w")
        self.x = self.file.create_dataset(
            "X", shape=(0, dim), maxshape=(None, dim), dtype="float32", chunks=(256, dim)
        )
        self.obs: list[pl.DataFrame] = []

    def write(self, x: np.ndarray, keys: pl.DataFrame) -> None:
        start = self.x.shape[0]
        self.x.resize(start + len(x), axis=0)
        self.x[start:] = x
        self.obs.append(keys)

    def close(self) -> None:
        import anndata
        import pandas as pd

        # Text keys as categoricals (scanpy's convention; nulls allowed); the row id is the index.
        obs = pl.concat(self.obs)
        index = pd.Index(obs[self.index].to_list(), dtype=object, name=self.index)
        obs = obs.drop(self.index).with_columns(pl.col(pl.String).cast(pl.Categorical))
        obs = obs.to_pandas()
        obs.index = index
        var = pd.DataFrame(index=pd.Index(feature_names(self.dim), dtype=object, name="feature"))
        self.file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        self.x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        with anndata.settings.override(allow_write_nullable_strings=True):
            self.write_elem(self.file, "obs", obs)
            self.write_elem(self.file, "var", var)
        for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            self.write_elem(self.file, name, {})
        self.file.close()


def export_profiles(
    store_path: str | Path,
    out: str | Path,
    level: str = "patch",
    fmt: str = "parquet",
    model_id: str | None = None,
    top_k: int = 10,
    chunk_rows: int = CHUNK_ROWS,
    progress: Progress | None = None,
) -> ProfileExport:
    """Write one model's (default: the latest) profiles at ``level`` to ``out``; see the module
    docstring. Reads the store only (no lock: readers see committed rows)."""
    if level not in LEVELS:
        raise ClanetError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ClanetError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    start = time.perf_counter()
    store = EmbeddingStore(store_path)
    model = store.encoder(model_id)
    model_id, dim = model.model_id, model.embedding_dim
    # LanceDB's count_rows takes SQL text only; a user's model id is never pasted into SQL.
    counted = store.query("embeddings", model_id).where(None if level == "patch" else _top(top_k))
    total = counted.select("rank").to_arrow().num_rows
    if total == 0:
        raise ClanetError(f"{store.path}: model {model_id} has no embeddings to export")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    chunks = (
        _patch_chunks(store, model_id, chunk_rows)
        if level == "patch"
        else _level_chunks(store, model_id, level, top_k, chunk_rows)
    )
    try:
        chunks = prefetched(chunks, PREFETCH_CHUNKS)
        rows = _write_chunks(tmp, chunks, store, level, fmt, dim, total, progress)
        if rows is None:
            raise ClanetError(f"{store.path}: model {model_id} has no rows at level {level}")
        tmp.replace(out)
    except OSError as exc:
        raise ClanetError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ProfileExport(
        path=str(out),
        format=fmt,
        level=level,
        model_id=model_id,
        random_init=bool(model.random_init),
        top_k=top_k,
        rows=rows,
        features=dim,
        seconds=time.perf_counter() - start,
    )


def _write_chunks(
    tmp: Path,
    chunks: Iterator[tuple[np.ndarray, pl.DataFrame, int]],
    store: EmbeddingStore,
    level: str,
    fmt: str,
    dim: int,
    total: int,
    progress: Progress | None,
) -> int | None:
    """Write every chunk (vectors, keys, patches read) to ``tmp`` in ``fmt``; the rows written,
    None when there was no chunk (nothing written)."""
    writer: _ParquetWriter | _AnnDataWriter | None = None
    rows = done = 0
    images = store.query("images").select("image_id", "path")
    paths = images.to_polars() if "path" in LEVEL_METADATA[level] else None
    for x, keys, patches in chunks:
        keys = _with_paths(paths, level, keys)
        if writer is None:
            schema = keys.to_arrow().schema
            writer = (
                _ParquetWriter(tmp, schema, dim)
                if fmt == "parquet"
                else _AnnDataWriter(tmp, schema, dim, LEVEL_ID[level])
            )
        writer.write(x, keys)
        rows, done = rows + len(x), done + patches
        if progress is not None:
            progress("exporting", done, total)
    if writer is None:
        return None
    writer.close()
    return rows
