"""Patch embeddings in LanceDB: one table per embedding width, one row per (patch_id, model_id).

``embeddings`` holds 1536-d vectors (ViT-S/8, the default); an encoder of another width (e.g. a
ViT-Ti trained by ``ssl-train``: 4 x 192 = 768) writes ``embeddings_768``, because a vector column
has one fixed size. The ``models`` table lists every encoder that wrote into the store, with its
weights source and whether it is a random init, so embeddings of different encoders never mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from lancedb import connect_async
from lancedb.background_loop import LOOP
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.schemas import arrow_type, load_schema
from clanet_store.stores import lance
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.filters import all_of
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.patch_store import CONSISTENCY, PatchStore
from clanet_store.stores.query import Query

DEFAULT_DIM = 1536
# Candidates re-ranked with the full vectors, x k: RaBitQ's 1-bit codes alone lose recall.
# benchmarks/bench_search_sweep.py on a 1 M x 1536 store (IVF_RQ, 500 partitions, nprobes 8, 150
# queries): recall@10 0.843 without re-ranking, 1.000 with 5, 10 and 20 (median 13.2, 14.1,
# 16.3 ms); on another store built the same way 5 gave 0.992 across batches, so 10, for a margin.
REFINE_FACTOR = 10
# Partitions searched. The same sweep with refine 10: recall@10 0.919 with 2, 1.000 with 4 and 8
# (median 13.2 and 14.1 ms); 8 leaves a margin for queries far from their partition's centroid.
# (With the earlier IVF_PQ index: 0.992 with 8, and p99 179 ms with 32 against 79 ms with 8.)
NPROBES = 8
# The keys of an embedding row that sequence and QC queries group and label by.
KEY_COLUMNS = (
    "patch_id",
    "image_id",
    "sequence_id",
    "cell_line",
    "batch",
    "well",
    "location",
    "crop",
    "timepoint_h",
    "rank",
)
# A search result's columns: HIT_COLUMNS and the distance come from the embeddings table,
# IMAGE_COLUMNS from the image's row in the images table (the keys ingest copied into every patch
# and embedding row, and the path).
HIT_COLUMNS = ("patch_id", "image_id", "rank")
IMAGE_COLUMNS = ("cell_line", "batch", "well", "location", "timepoint_h", "path")
RESULT_COLUMNS = (
    "patch_id",
    "image_id",
    "cell_line",
    "batch",
    "well",
    "location",
    "timepoint_h",
    "rank",
    "distance",
    "path",
)


def embeddings_table_name(dim: int, layout: str = "embeddings") -> str:
    """``embeddings`` for 1536-d vectors, ``embeddings_<dim>`` otherwise (likewise for the
    ``sequence_embeddings`` layout)."""
    return layout if dim == DEFAULT_DIM else f"{layout}_{dim}"


def embeddings_schema(dim: int, layout: str = "embeddings") -> pa.Schema:
    """The ``embeddings`` (or ``sequence_embeddings``) layout with a vector column of ``dim``
    floats."""
    schema = load_schema(layout)
    i = schema.get_field_index("embedding")
    field = schema.field(i)
    vector = arrow_type(f"fixed_size_list<float32, {dim}>")
    return schema.set(i, field.with_type(vector))


class EmbeddingStore:
    """A store with embeddings: the store's `PatchStore` (``patch_store``: store.json, the patch
    array and pixels, the writer side) and the encoders, embeddings and search on top of it.
    `query` reads every table; vectors come out as NumPy (zero-copy where possible)."""

    def __init__(
        self,
        path: str | Path | StoreLocation,
        create: bool = False,
        consistency: timedelta | None = CONSISTENCY,
    ):
        """Open the store at ``path`` (see `PatchStore`: ``create``, writer only; ``consistency``,
        how stale an open table may read)."""
        self.patch_store = PatchStore(path, create=create, consistency=consistency)
        self.path = self.patch_store.path
        # (version, model_id -> record, oldest first) of the models table as last read.
        self._models: tuple[int, dict[str, EncoderRecord]] | None = None
        # The images table's image_id and IMAGE_COLUMNS, and image_id -> row; see _image_rows.
        self._images: tuple[pl.DataFrame, dict[str, int]] | None = None
        # LanceDB's async connection and the tables opened on it, for searches (_async_table).
        self._async: tuple[Any, dict[str, Any]] | None = None

    def table(self, name: str):
        """The LanceDB table ``name`` (`PatchStore.table`)."""
        return self.patch_store.table(name)

    def query(self, table: str, model_id: str | None = None) -> Query:
        """Rows of ``table`` as a `Query`. ``embeddings``: the rows of one encoder (``model_id``;
        default: `encoder`'s choice) from its ``embeddings_<dim>`` table; any other table as
        `PatchStore.query` reads it (``patches``: committed rows only)."""
        if table == "embeddings":
            return Query(table, partial(self._embeddings, self.encoder(model_id)))
        if model_id is not None:
            raise ClanetError(f"query({table!r}): model_id applies to embeddings only")
        return self.patch_store.query(table)

    def _embeddings(
        self, model: EncoderRecord, columns: Sequence[str] | None, where: Expr | None
    ) -> pa.Table:
        condition = col("model_id") == model.model_id
        search = self.table(model.table).search().where(all_of([condition, where]))
        if columns:
            search = search.select(list(columns))
        return search.limit(None).to_arrow()

    def encoders(self) -> tuple[EncoderRecord, ...]:
        """The encoders that wrote embeddings into this store, oldest first (none before the
        first encode).

        Read again only when the table has a new version: ``search`` asks on every query, and a
        version check costs ~0.5 ms where a read costs ~3 ms.
        """
        db = self.patch_store.db
        if self._models is None and "models" not in db.list_tables(limit=10_000).tables:
            return ()
        table = self.table("models")
        version = table.version
        if self._models is None or self._models[0] != version:
            rows = lance.read(table).sort("created_at", maintain_order=True)
            records = (EncoderRecord.from_row(r) for r in rows.iter_rows(named=True))
            self._models = (version, {r.model_id: r for r in records})
        return tuple(self._models[1].values())

    def encoder(self, model_id: str | None = None) -> EncoderRecord:
        """The encoder ``model_id``; without one, the only (or latest) encoder, leaving out
        encoders fitted to one split's training side (an inductive ``ablation`` adds them) unless
        the store has no other."""
        encoders = self.encoders()
        if not encoders:
            raise ClanetError(f"{self.path}: no embeddings yet (run clanet-store encode)")
        if model_id is None:
            general = [e for e in encoders if not e.fitted_to_split]
            return (general or encoders)[-1]
        by_id = self._models[1]
        if model_id not in by_id:
            known = ", ".join(by_id)
            raise ClanetError(f"{self.path}: no embeddings of model {model_id} (known: {known})")
        return by_id[model_id]

    def search(
        self,
        query: np.ndarray | str,
        k: int = 10,
        where: Expr | None = None,
        model_id: str | None = None,
        other_batches: bool = False,
    ) -> pl.DataFrame:
        """The k patches nearest (cosine distance) to a vector or to a stored patch id.

        A patch id query leaves the patch itself out, and with ``other_batches`` its whole batch
        (one (cell_line, batch) pair). Exact below the index size threshold; with a vector index,
        ``REFINE_FACTOR`` x k candidates are re-ranked with the full vectors.

        The ``model_id`` condition is left out while the model is the only one writing into its
        table: LanceDB's prefilter costs time for every scanned row it lets through, and this one
        lets every row through. A model added later is listed before its first embedding is
        written, so the next search sees it; a search racing that first write finds the other
        model's rows among its hits and searches again with the condition.
        """
        model = self.encoder(model_id)
        conditions = [where]
        if isinstance(query, str):
            keys = self.patch_keys(query, model.model_id)
            conditions.append(col("patch_id") != query)
            if other_batches:
                conditions.append(
                    (col("cell_line") != keys["cell_line"]) | (col("batch") != keys["batch"])
                )
            query = keys["embedding"]
        elif other_batches:
            raise ClanetError("other_batches needs a stored patch id as the query")
        if query.shape != (model.embedding_dim,):
            raise ClanetError(
                f"query vector has shape {query.shape}, the model gives {model.embedding_dim}-d"
            )
        own = col("model_id") == model.model_id
        shared = sum(e.table == model.table for e in self._models[1].values()) > 1
        found = self._nearest(model.table, query, k, all_of([own if shared else None, *conditions]))
        if not shared and (found["model_id"] != model.model_id).any():
            found = self._nearest(model.table, query, k, all_of([own, *conditions]))
        images = self._image_rows(found["image_id"].to_list())
        return pl.concat([found, images], how="horizontal").select(RESULT_COLUMNS)

    def _image_rows(self, image_ids: list[str]) -> pl.DataFrame:
        """``IMAGE_COLUMNS`` of each image, in order (nulls for an id the images table lacks).

        From a memo of the images table, read on first use (0.2 s at 100,000 images), because
        any LanceDB query costs ~5 ms and each column a search fetches ~0.5 ms more (1 M rows):
        the image's keys are the same in its images row and its embedding rows (ingest copies
        them). An image id is a hash of its path and a re-extracted image keeps its keys, so an
        entry never goes stale; images ingested later are read when first asked for.
        """
        columns = ["image_id", *IMAGE_COLUMNS]
        images = self.query("images").select(*columns)
        if self._images is None:
            table = images.to_polars()
            self._images = (table, {i: n for n, i in enumerate(table["image_id"])})
        table, rows = self._images
        missing = list({i for i in image_ids if i not in rows})
        if missing:
            new = images.where(col("image_id").isin(missing)).to_polars()
            rows.update({i: table.height + n for n, i in enumerate(new["image_id"])})
            table = table.vstack(new)
            self._images = (table, rows)
        at = pl.Series([rows.get(i) for i in image_ids], dtype=pl.UInt32)
        return table.select(pl.col(IMAGE_COLUMNS).gather(at))

    def _nearest(
        self, table: str, query: np.ndarray, k: int, condition: Expr | None
    ) -> pl.DataFrame:
        """The k rows of ``table`` nearest to ``query`` (cosine) that meet ``condition``, sorted,
        with ``HIT_COLUMNS``, ``model_id`` and ``distance`` (never the vectors).

        nprobes and refine_factor are set unconditionally: LanceDB ignores them without a vector
        index (an exact scan), which saves listing the indexes on every query.
        """
        search = (
            self._async_table(table)
            .query()
            .nearest_to(query.astype(np.float32))
            .column("embedding")
            .distance_type("cosine")
            .select([*HIT_COLUMNS, "model_id", "_distance"])
            .nprobes(NPROBES)
            .refine_factor(REFINE_FACTOR)
            .limit(k)
        )
        if condition is not None:
            search = search.where(condition)  # a prefilter: the k nearest rows that match
        hits = LOOP.run(search.to_arrow())
        return pl.from_arrow(hits).rename({"_distance": "distance"}).sort("distance")

    def _async_table(self, name: str) -> Any:
        """``name`` opened with LanceDB's async API, on the event loop its sync API runs in a
        background thread (so this works inside a running loop, e.g. Jupyter). A sync query reads
        the table's schema three times (blob column checks): 3 ms of a ~19 ms search at 1 M rows
        (bench_search.py store, the same queries in turn: median 16.2 ms async, 19.3 ms sync)."""
        if self._async is None:
            where = self.path
            connect = connect_async(
                where.child("lance"),
                storage_options=where.lance_options(),
                read_consistency_interval=CONSISTENCY,
            )
            db = LOOP.run(connect)
            self._async = (db, {})
        db, tables = self._async
        if name not in tables:
            tables[name] = LOOP.run(db.open_table(name))
        return tables[name]

    def patch_keys(self, patch_id: str, model_id: str | None = None) -> dict:
        """A stored patch's embedding (NumPy), cell line, batch and image id."""
        query = self.query("embeddings", model_id).where(col("patch_id") == patch_id)
        rows = query.select("embedding", "cell_line", "batch", "image_id").to_polars()
        if rows.height == 0:
            raise ClanetError(
                f"{self.path}: no embedding for patch {patch_id!r} (wrong id or model?)"
            )
        row = rows.row(0, named=True)
        row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
        return row
