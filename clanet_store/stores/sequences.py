"""Sequences (MIL bags, SPEC 1 and 6) read from the embeddings of one encoder.

A sequence is every image of one (cell line, batch, well, location, crop), keyed by its
``sequence_id``; its bag holds the embeddings of each image's patches of rank < k, images in time
order. Everything is assembled with column operations: one LanceDB scan, a polars sort, and one
NumPy scatter of all vectors into a single (images, k, D) block of which every bag is a view (no
per-patch Python loop, no copy per bag). The caller keeps the bags for all epochs: that list is
the cache, built once per run.

Readings:

- Label: the index of the cell line in ``classes`` (default: the sorted cell lines found). Given
  ``classes`` (a model's), cell lines outside them are appended, sorted, to the returned class
  list, so a label ``>= len(classes)`` means "not a class of the model" (``predict`` reports them
  as labelled, never scores them).
- Batch key ``cell_line/batch`` (a batch is one flask of one cell line); position key
  ``well/location[/crop]`` (the flask position within its batch).
- Slots: an image's patches fill slots 0, 1, ... in rank order; an image with fewer than k
  patches (or whose patches a filter removed) keeps what it has and the rest are masked.
- Only embeddings of patches the ``patches`` table still lists count: re-ingesting a changed image
  replaces its patch rows, but the old patches' embeddings stay in the embeddings table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.learn.bags import Bag, well_of
from clanet_store.schemas import load_schema
from clanet_store.stores.embedding_store import KEY_COLUMNS, EmbeddingStore

# Rows per step of the vector scatter: bounds the temporary copy to ~100 MB at 1536-d.
_SCATTER_ROWS = 16_384
# What names a sequence (a field's time-lapse) and where it was imaged: its key columns.
SEQUENCE_KEYS = ("sequence_id", "cell_line", "batch", "well", "location", "crop")


@dataclass(frozen=True)
class SequenceRecord:
    """A sequence without its embeddings (what a split needs), fields as in `Bag`."""

    key: str
    label: int
    batch: str
    position: str
    n_images: int

    @property
    def well(self) -> str:
        """As `Bag.well`."""
        return well_of(self.position)


def filter_schema() -> pa.Schema:
    """The columns a ``--where`` on sequences may use (the embeddings table's)."""
    return load_schema("embeddings")


def sequence_filter(keys: Iterable[str]) -> Expr:
    """Rows of exactly these sequences (whole-string match on ``sequence_id``)."""
    return col("sequence_id").isin(sorted(set(keys)))


def _patches(
    store: EmbeddingStore, where: Expr | None, k: int, model_id: str | None, with_vectors: bool
) -> tuple[pl.DataFrame, pa.Table]:
    """The selected patches in bag order with ``image`` / ``slot`` indices, and the Arrow rows.

    Frame columns: ``KEY_COLUMNS``, ``row`` (index into the Arrow table), ``image`` (running image
    number), ``slot`` (position within the image, by rank). Raises ClanetError when nothing is
    selected.
    """
    if k < 1:
        raise ClanetError(f"k must be >= 1, got {k}")
    expr = col("rank") < k if where is None else (col("rank") < k) & where
    columns = [*KEY_COLUMNS, "embedding"] if with_vectors else KEY_COLUMNS
    table = store.query("embeddings", model_id).where(expr).select(*columns).to_arrow()
    live = store.query("patches").where(col("rank") < k).select("patch_id").to_polars()
    frame = (
        pl.from_arrow(table.select(list(KEY_COLUMNS)))
        .with_row_index("row")
        .join(live, on="patch_id", how="semi")
        .sort("sequence_id", "timepoint_h", "image_id", "rank")
    )
    if frame.height == 0:
        raise ClanetError(
            f"{store.path}: no patch embeddings of model {store.encoder(model_id).model_id} "
            f"with rank < {k} match the filter"
        )
    new_image = frame["image_id"].ne(frame["image_id"].shift()).fill_null(True).to_numpy()
    image = np.cumsum(new_image) - 1
    slot = np.arange(frame.height) - np.flatnonzero(new_image)[image]
    if slot.max() >= k:
        raise ClanetError(f"{store.path}: an image has more than k={k} patches of rank < {k}")
    return frame.with_columns(image=pl.Series(image), slot=pl.Series(slot)), table


def _sequences(
    frame: pl.DataFrame, classes: Sequence[str] | None
) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """One row per sequence in bag order: keys, label, first and end image, and the classes."""
    found = sorted(frame["cell_line"].unique().to_list())
    known = list(classes) if classes is not None else found
    classes_out = (*known, *sorted(set(found) - set(known)))
    index = {name: i for i, name in enumerate(classes_out)}
    sequences = (
        frame.group_by("sequence_id", maintain_order=True)
        .agg(
            pl.col("cell_line", "batch", "well", "location", "crop").first(),
            first=pl.col("image").first(),
            end=pl.col("image").last() + 1,
        )
        .with_columns(
            batch_key=pl.concat_str("cell_line", "batch", separator="/"),
            position=pl.concat_str("well", "location", "crop", separator="/", ignore_nulls=True),
            label=pl.col("cell_line").replace_strict(index, return_dtype=pl.Int64),
        )
    )
    return sequences, classes_out


def list_sequences(
    store: EmbeddingStore,
    where: Expr | None = None,
    k: int = 10,
    model_id: str | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[list[SequenceRecord], tuple[str, ...]]:
    """The sequences `load_bags` would return (same order, labels, classes), without vectors."""
    frame, _ = _patches(store, where, k, model_id, with_vectors=False)
    sequences, classes_out = _sequences(frame, classes)
    records = [
        SequenceRecord(
            key=s["sequence_id"],
            label=s["label"],
            batch=s["batch_key"],
            position=s["position"],
            n_images=s["end"] - s["first"],
        )
        for s in sequences.iter_rows(named=True)
    ]
    return records, classes_out


def _scatter(
    column: pa.ChunkedArray, rows: np.ndarray, target: np.ndarray, out: np.ndarray
) -> None:
    """``out[target[i]] = the vector in row rows[i] of column``, Arrow chunk by chunk.

    Each chunk is read in place (no combined copy of the column, unlike `vectors`) and a
    fancy-indexed assignment never copies more than ``_SCATTER_ROWS`` vectors at once.
    """
    order = np.argsort(rows, kind="stable")
    rows, target = rows[order], target[order]
    offset = 0
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), -1)
        lo, hi = np.searchsorted(rows, [offset, offset + len(chunk)])
        for start in range(lo, hi, _SCATTER_ROWS):
            end = min(start + _SCATTER_ROWS, hi)
            out[target[start:end]] = values[rows[start:end] - offset]
        offset += len(chunk)


def load_bags(
    store: EmbeddingStore,
    where: Expr | None = None,
    k: int = 10,
    model_id: str | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[list[Bag], tuple[str, ...]]:
    """The bags of every sequence with a patch of rank < k passing ``where``, sorted by key.

    ``model_id``: whose embeddings (default: the store's latest encoder). Returns the bags and
    the class list their labels index (see the module docstring). Raises ClanetError when the
    store has no such model or nothing matches.
    """
    frame, table = _patches(store, where, k, model_id, with_vectors=True)
    sequences, classes_out = _sequences(frame, classes)
    column = table.column("embedding")
    n_images = int(frame["image"][-1]) + 1
    embeddings = np.zeros((n_images, k, column.type.list_size), dtype=np.float32)
    mask = np.zeros((n_images, k), dtype=bool)
    image, slot = frame["image"].to_numpy(), frame["slot"].to_numpy()
    mask[image, slot] = True
    _scatter(
        column, frame["row"].to_numpy(), image * k + slot, embeddings.reshape(n_images * k, -1)
    )
    del column, table  # the Arrow buffers are no longer needed once scattered
    first_rows = np.flatnonzero(np.diff(image, prepend=-1))
    times = frame["timepoint_h"].to_numpy()[first_rows].astype(np.float64)
    bags = [
        Bag(
            key=s["sequence_id"],
            label=s["label"],
            batch=s["batch_key"],
            position=s["position"],
            times=times[s["first"] : s["end"]],
            embeddings=embeddings[s["first"] : s["end"]],
            mask=mask[s["first"] : s["end"]],
        )
        for s in sequences.select(
            "sequence_id", "label", "batch_key", "position", "first", "end"
        ).iter_rows(named=True)
    ]
    return bags, classes_out
