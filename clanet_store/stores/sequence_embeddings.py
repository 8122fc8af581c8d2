"""Sequence embeddings: one pooled vector per (sequence, model_id, pooling), for ``authenticate``.

Pooling ``mean-rank<10`` (`MEAN`, the default): the mean of the sequence's patch embeddings of
CCS rank < 10 (the bags' default k), over the patches the ``patches`` table still lists (as in
`stores.sequences`). Another `Pooling` (``authenticate --mil``: ``mil:<model file hash>``, the
trained MIL's bag vector z) computes its vectors from the sequences' bags (`load_bags`) with its
own function; its rows share the table, keyed by the ``pooling`` column, and never mix with the
mean's (every read selects one pooling). Each row keeps a fingerprint of the patch ids it pooled.
`update_sequence_embeddings` reads only the keys of the model's patch embeddings, recomputes every
sequence's fingerprint and pools again only the sequences that are new or whose fingerprint
changed; the mean in one streamed pass over the vectors (``STREAM_ROWS`` rows at a time: memory
holds one batch and one running sum per pooled sequence, never the patch vectors). Rows of
sequences that lost every patch are deleted. Rows are written with `lance.upsert` (key
``row_id``, de-duplicated) and the table is compacted once. ``encode`` calls it after every run
(mean pooling; a MIL pooling is updated when ``authenticate --mil`` reads it); ``rebuild`` pools
every sequence again. store.json records, per model and pooling, the versions of the
``patches``, ``images`` and embeddings tables each update saw, so a reader
knows in milliseconds that nothing changed since (`is_current`); ``repair`` drops the record,
which costs one update.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.exports.scan import short_hash
from clanet_store.learn.bags import Bag
from clanet_store.learn.encoder_metrics import sum_by_code
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import (
    EmbeddingStore,
    embeddings_schema,
    embeddings_table_name,
)
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.patch_store import read_meta, write_meta
from clanet_store.stores.query import vectors
from clanet_store.stores.sequences import SEQUENCE_KEYS, load_bags, sequence_filter

LAYOUT = "sequence_embeddings"
POOL_K = 10
STREAM_ROWS = 32_768  # patch vectors per streamed batch: 200 MB at 1536-d
# Above this many sequences to pool, one scan of every vector beats a long ``IN`` list.
IN_LIST_MAX = 1000
# store.json key: per model, the versions of the source tables at its last update.
SOURCES_KEY = "sequence_sources"
ROW_KEYS = (
    *SEQUENCE_KEYS,
    "time_start_h",
    "time_end_h",
    "n_images",
    "n_patches",
    "fingerprint",
    "image_id",
)


@dataclass(frozen=True)
class Pooling:
    """How a sequence becomes one vector: ``name`` (the ``pooling`` key of its rows), the
    patch ranks it reads (< ``k``) and ``bag_vectors`` (the sequences' bags, in order -> their
    vectors (n, D)); without ``bag_vectors``, the streamed mean."""

    name: str
    k: int = POOL_K
    bag_vectors: Callable[[list[Bag]], np.ndarray] | None = None


MEAN = Pooling(f"mean-rank<{POOL_K}>")


@dataclass(frozen=True)
class SequenceTableUpdate:
    """What one update of a model's sequence vectors did."""

    model_id: str
    table: str
    pooling: str
    sequences: int  # rows of the model after the update
    pooled: int  # sequences (re)pooled
    removed: int  # rows deleted (the sequence has no patch left)
    patches_read: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sequence_table_name(dim: int) -> str:
    """``sequence_embeddings`` for 1536-d vectors, ``sequence_embeddings_<dim>`` otherwise."""
    return embeddings_table_name(dim, LAYOUT)


def current_sequences(
    store: EmbeddingStore, model_id: str, k: int = POOL_K
) -> tuple[pl.DataFrame, pl.Series]:
    """Every sequence of the model as the table would hold it (``ROW_KEYS``, no vector), and
    the ids of its stale patch embeddings of rank < k (their patch is no longer listed: they
    are not pooled), from the keys alone."""
    keys = (
        store.query("embeddings", model_id)
        .where(col("rank") < k)
        .select("patch_id", "image_id", *SEQUENCE_KEYS, "timepoint_h")
        .to_polars()
    )
    live = store.query("patches").where(col("rank") < k).select("patch_id").to_polars()
    stale = keys.join(live, on="patch_id", how="anti")["patch_id"]
    keys = keys.join(live, on="patch_id", how="semi").sort("sequence_id", "timepoint_h", "image_id")
    rows = keys.group_by("sequence_id", maintain_order=True).agg(
        pl.col(*SEQUENCE_KEYS[1:]).first(),
        time_start_h=pl.col("timepoint_h").min(),
        time_end_h=pl.col("timepoint_h").max(),
        n_images=pl.col("image_id").n_unique().cast(pl.Int32),
        n_patches=pl.len().cast(pl.Int32),
        fingerprint=pl.col("patch_id").sort().str.join(",").hash(seed=0).cast(pl.String),
        image_id=pl.col("image_id").first(),
    )
    return rows.select(ROW_KEYS), stale


def _model_rows(model_id: str, pooling: Pooling) -> Expr:
    return (col("model_id") == model_id) & (col("pooling") == pooling.name)


def _sources_key(model_id: str, pooling: Pooling) -> str:
    """store.json's key of a model's pooling (the model id alone for `MEAN`)."""
    return model_id if pooling.name == MEAN.name else f"{model_id} {pooling.name}"


def _source_versions(store: EmbeddingStore, model: EncoderRecord) -> dict[str, int]:
    """The versions of the tables a model's sequence vectors are computed from."""
    return {name: store.table(name).version for name in ("patches", "images", model.table)}


def is_current(store: EmbeddingStore, model_id: str | None = None, pooling: Pooling = MEAN) -> bool:
    """Whether no table the model's sequence vectors of ``pooling`` come from changed since
    their last update (store.json records the versions; a store without the record is not
    current)."""
    model = store.encoder(model_id)
    key = _sources_key(model.model_id, pooling)
    recorded = read_meta(store.path).get(SOURCES_KEY, {}).get(key)
    return recorded == _source_versions(store, model)


def update_sequence_embeddings(
    store: EmbeddingStore,
    model_id: str | None = None,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
    pooling: Pooling = MEAN,
) -> SequenceTableUpdate:
    """Bring the model's sequence vectors of ``pooling`` up to date (see the module doc). The
    caller holds the writer lock."""
    start = time.perf_counter()
    model = store.encoder(model_id)
    mid, dim = model.model_id, model.embedding_dim
    sources = _source_versions(store, model)
    name = sequence_table_name(dim)
    table = store.patch_store.table(name, create=embeddings_schema(dim, LAYOUT))
    store.patch_store.register_table(name)
    current, stale = current_sequences(store, mid, pooling.k)
    stored = lance.read(table, ["row_id", "sequence_id", "fingerprint"], _model_rows(mid, pooling))
    pairs = ["sequence_id", "fingerprint"]
    todo = current if rebuild else current.join(stored, on=pairs, how="anti")
    gone = stored.join(current, on="sequence_id", how="anti")["row_id"].to_list()
    if pooling.bag_vectors is None:
        pooled, read = _pool(store, model, todo, stale, progress)
    else:
        pooled, read = _pool_bags(store, mid, todo, pooling)
    if todo.height:
        lance.upsert(table, _rows(todo, pooled, mid, dim, pooling), "row_id")
    lance.delete_where_in(table, "row_id", gone)
    if todo.height or gone:
        lance.compact(table, deleted=bool(gone))
    meta = read_meta(store.path)
    meta.setdefault(SOURCES_KEY, {})[_sources_key(mid, pooling)] = sources
    write_meta(store.path, meta)
    store.patch_store.meta = meta
    return SequenceTableUpdate(
        model_id=mid,
        table=name,
        pooling=pooling.name,
        sequences=current.height,
        pooled=todo.height,
        removed=len(gone),
        patches_read=read,
        seconds=time.perf_counter() - start,
    )


def _pool(
    store: EmbeddingStore,
    model: EncoderRecord,
    todo: pl.DataFrame,
    stale: pl.Series,
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, int]:
    """The mean vector of each sequence of ``todo`` (in its order), streamed; and the number of
    patch vectors read. Each streamed row finds its sequence by ``sequence_id`` (a join on
    ``todo``'s few ids: one on the patch ids, against every pooled patch, cost 0.2-0.5 s per
    batch at 1 M); the ``stale`` patches are dropped by id, and only when there are any."""
    dim = model.embedding_dim
    sums = np.zeros((todo.height, dim), np.float64)
    if todo.height == 0:
        return sums.astype(np.float32), 0
    codes = todo.select("sequence_id").with_row_index("code")
    where = _pooled_patch_rows(model.model_id)
    if todo.height <= IN_LIST_MAX:
        where = where & col("sequence_id").isin(todo["sequence_id"].to_list())
    columns = ["sequence_id", "embedding", *(["patch_id"] if len(stale) else [])]
    reader = (
        store.table(model.table)
        .search()
        .where(where)
        .select(columns)
        .limit(None)
        .to_batches(STREAM_ROWS)
    )
    expected, read = int(todo["n_patches"].sum()), 0
    for batch in reader:
        code, keep = _batch_codes(batch, codes, stale)
        read += len(code)
        if len(code):
            vecs = vectors(pa.table({"embedding": batch.column("embedding")}))
            groups, local = np.unique(code, return_inverse=True)
            sums[groups] += sum_by_code(vecs if keep is None else vecs[keep], local, len(groups))
        if progress is not None:
            progress(read, expected)
    if read != expected:
        raise ClanetError(
            f"{store.path}: read {read} of {expected} patch embeddings of model "
            f"{model.model_id} (a writer changed them?); run the same command again"
        )
    counts = todo["n_patches"].to_numpy().astype(np.float64)
    return (sums / counts[:, None]).astype(np.float32), read


def _pool_bags(
    store: EmbeddingStore, model_id: str, todo: pl.DataFrame, pooling: Pooling
) -> tuple[np.ndarray, int]:
    """``pooling.bag_vectors`` of the bags of ``todo``'s sequences (in its order), and the number
    of patch vectors read."""
    if todo.height == 0 or pooling.bag_vectors is None:
        return np.zeros((0, 0), np.float32), 0
    ids = todo["sequence_id"].to_list()
    where = sequence_filter(ids) if len(ids) <= IN_LIST_MAX else None
    by_key = {bag.key: bag for bag in load_bags(store, where, pooling.k, model_id)[0]}
    bags = [by_key[i] for i in ids]
    return pooling.bag_vectors(bags), int(sum(bag.mask.sum() for bag in bags))


def _batch_codes(
    batch: pa.RecordBatch, codes: pl.DataFrame, stale: pl.Series
) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``codes`` of a streamed batch's pooled rows and which rows they are (None: all)."""
    frame = pl.from_arrow(pa.table({"sequence_id": batch.column("sequence_id")}))
    code = frame.join(codes, on="sequence_id", how="left", maintain_order="left")["code"]
    pooled = code.is_not_null()
    if len(stale):
        pooled &= ~pl.Series(batch.column("patch_id")).is_in(stale.implode())
    if pooled.all():
        return code.to_numpy(), None
    return code.filter(pooled).to_numpy(), pooled.to_numpy()


def _pooled_patch_rows(model_id: str) -> Expr:
    return (col("model_id") == model_id) & (col("rank") < POOL_K)


def _rows(
    todo: pl.DataFrame, means: np.ndarray, model_id: str, dim: int, pooling: Pooling
) -> pa.Table:
    """The table rows of the pooled sequences."""
    now = datetime.now(UTC).replace(tzinfo=None)
    row_ids = [short_hash(f"{s}|{model_id}|{pooling.name}") for s in todo["sequence_id"]]
    frame = todo.with_columns(
        row_id=pl.Series(row_ids, dtype=pl.String),
        model_id=pl.lit(model_id),
        pooling=pl.lit(pooling.name),
        created_at=pl.lit(now, dtype=pl.Datetime("us")),
    ).to_arrow()
    flat = pa.array(np.ascontiguousarray(means, dtype=np.float32).ravel())
    frame = frame.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, dim))
    return lance.to_arrow(frame, embeddings_schema(dim, LAYOUT))


def read_sequences(
    store: EmbeddingStore, model_id: str, where: Expr | None = None, pooling: Pooling = MEAN
) -> tuple[pl.DataFrame, np.ndarray]:
    """The model's sequence rows of ``pooling`` selected by ``where`` (keys without the vector)
    and their vectors (n, dim) float32."""
    model = store.encoder(model_id)
    name = sequence_table_name(model.embedding_dim)
    if name not in store.patch_store.db.list_tables(limit=10_000).tables:
        raise ClanetError(f"{store.path}: no sequence vectors yet (run clanet-store encode)")
    query = _model_rows(model.model_id, pooling)
    if where is not None:
        query = query & where
    table = store.table(name).search().where(query).limit(None).to_arrow()
    keys = pl.from_arrow(table.drop_columns(["embedding"]))
    return keys, np.asarray(vectors(table)) if table.num_rows else np.zeros((0, 0), np.float32)
