"""``encode``: embed every stored patch that has no embedding for this encoder yet.

Incremental and resumable: the work list is the ``patches`` table minus the patch ids that
already have a row for this ``model_id``, so a re-run adds nothing and a killed run continues
where it stopped (rows are committed every ``commit_every`` patches; at most that much work is
redone). Embeddings of patches that ingest has since replaced are deleted first. Patches are
read from Zarr in row order, in whole batches, by a background thread that stays a few batches
ahead, so the model never waits on I/O. Each run ends by bringing the model's sequence vectors
up to date (`stores.sequence_embeddings`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from lancedb.expr import col

from clanet_store.errors import ClanetError
from clanet_store.learn.splits import Split
from clanet_store.models.checkpoint import CheckpointError, checkpoint_arch
from clanet_store.models.classic import (
    CLASSIC_ARCH,
    FIT_PATCHES,
    ClassicConfig,
    ClassicEncoder,
    describe,
    fit_statistics,
)
from clanet_store.models.device import inference_context, select_device
from clanet_store.models.encoder import EncoderConfig, PatchEncoder, build_encoder
from clanet_store.models.protocol import Encoder
from clanet_store.pipelines.encode_workers import Cluster, remote_encoder
from clanet_store.pipelines.ingest import IMAGE_KEYS
from clanet_store.pipelines.prefetch import prefetched
from clanet_store.progress import Progress
from clanet_store.schemas import load_schema
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import (
    EmbeddingStore,
    embeddings_schema,
    embeddings_table_name,
)
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.lock import writer_lock
from clanet_store.stores.patch_store import PATCH_SIZE, slot_batches
from clanet_store.stores.sequence_embeddings import update_sequence_embeddings
from clanet_store.stores.sequences import sequence_filter

META_COLUMNS = ("patch_id", *IMAGE_KEYS, "rank", "density")
PREFETCH_BATCHES = 4
FIT_SEED = 0


@dataclass
class EncodeReport:
    """What one encode run did (the JSON keys of ``clanet-store encode --format json``)."""

    patches_encoded: int
    patches_skipped: int
    stale_removed: int
    seconds: float
    patches_per_s: float
    model_id: str
    weights: str
    weights_format: str
    random_init: bool
    arch: str
    embedding_dim: int
    table: str
    device: str
    workers: int  # Dask workers that ran the encoder; 0: in this process

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_encoder(
    weights: str | Path | None,
    arch: str | None,
    device: str,
    seed: int = 0,
    normalize: bool = False,
) -> PatchEncoder:
    """The encoder for ``encode``: the arch comes from ``arch``, else from a clanet-ssl
    checkpoint, else the default ViT-S/8; weights only from a local file or a seeded init."""
    try:
        arch = arch or (checkpoint_arch(weights) if weights else None) or EncoderConfig.arch
        encoder = build_encoder(EncoderConfig(arch=arch, normalize=normalize), weights, seed)
        return encoder.to(select_device(device))
    except (CheckpointError, ValueError) as exc:
        raise ClanetError(str(exc)) from None


def classic_encoder(
    store_path: str | Path, threads: int | None = None, split: Split | None = None
) -> ClassicEncoder:
    """The store's classic encoder: the one recorded by an earlier classic encode (its frozen
    statistics), else one fitted on up to FIT_PATCHES patches drawn with a fixed seed
    (`classic_fit_rows`). With ``split``, the one fitted on the patches of its training
    sequences only (inductive for that split; issue 19); without, on all stored patches.

    The draw depends only on the store's patch ids, so a run killed before it recorded the
    encoder fits the same statistics again. The sample's features are kept in the encoder, so
    the encode that follows does not compute them twice.
    """
    store = EmbeddingStore(store_path, consistency=None)  # reads once: no version re-checks
    fit_sequences = None if split is None else tuple(split.train)
    for record in store.encoders():
        if record.arch != CLASSIC_ARCH:
            continue
        with contextlib.suppress(ValueError):  # another version of the descriptor
            config = ClassicConfig.from_dict(record.settings)
            if config.fit_sequences == fit_sequences:
                return ClassicEncoder(config, threads)
    rows = classic_fit_rows(store, split)
    if len(rows) == 0:
        side = "" if split is None else f" on the training side of {split.kind} r{split.repeat}"
        raise ClanetError(
            f"{store.path}: no patches{side} to fit the classic encoder on (run ingest)"
        )
    pixels = store.patch_store.read_rows(rows)
    raw = describe(pixels, threads)
    fit_split = None if split is None else f"{split.kind} r{split.repeat}"
    config = fit_statistics(raw, fit_split, fit_sequences)
    return ClassicEncoder(config, threads, known=(pixels, raw))


def classic_fit_rows(store: EmbeddingStore, split: Split | None = None) -> np.ndarray:
    """Zarr rows of the classic statistics' sample: all patches of images drawn with FIT_SEED
    from the store's images sorted by id (or from those of ``split``'s training sequences)
    until they hold FIT_PATCHES patches, or of every image when they hold fewer.

    Whole images, because an image's patches are one Zarr chunk: the fit reads about
    FIT_PATCHES / 20 chunks, where a draw of single patches from a large store reads up to
    FIT_PATCHES of them (a request each on object storage; BENCHMARKS.md). The draw depends
    only on the image ids and their patch counts, so a killed run fits the same again."""
    where = None if split is None else sequence_filter(split.train)
    patches = store.query("patches").where(where).select("patch_id", "image_id", "row")
    patches = patches.to_polars()
    sizes = patches.group_by("image_id").len().sort("image_id")
    order = np.random.default_rng(FIT_SEED).permutation(sizes.height)
    enough = np.searchsorted(np.cumsum(sizes["len"].to_numpy()[order]), FIT_PATCHES) + 1
    drawn = sizes["image_id"].gather(order[:enough])
    # Sorted by patch id, as the single-patch draw was: a store of up to FIT_PATCHES patches
    # keeps the statistics (and the model_id) that draw gave it.
    sample = patches.filter(pl.col("image_id").is_in(drawn.implode())).sort("patch_id")
    return sample["row"].to_numpy()


def encoder_for_model(
    model: EncoderRecord, weights: str | Path | None, device: str = "auto"
) -> Encoder:
    """Rebuild the encoder that wrote a model's embeddings: a classic one
    from its recorded statistics, from ``weights`` for trained encoders, from the recorded seed
    for a random init (``weights`` given for a random init are loaded and checked too, never
    ignored); refuse any other encoder."""
    config = model.settings
    if config["arch"] == CLASSIC_ARCH:
        if weights is not None:
            raise ClanetError(
                f"{weights}: model {model.model_id} is the classic descriptor, which takes no "
                "weights file"
            )
        try:
            encoder: Encoder = ClassicEncoder(ClassicConfig.from_dict(config))
        except ValueError as exc:
            raise ClanetError(f"model {model.model_id}: {exc}") from None
        weights = model.weights_source
    else:
        seed = 0
        if model.random_init and weights is None:
            seed = int(model.weights_source.split("seed=")[1].rstrip(")"))
        elif weights is None:
            raise ClanetError(
                f"model {model.model_id} was made from weights {model.weights_source}: "
                "pass that file with --weights"
            )
        encoder = load_encoder(weights, config["arch"], device, seed, config["normalize"])
    if encoder.model_id != model.model_id:
        raise ClanetError(
            f"{weights}: gives model {encoder.model_id}, not {model.model_id} (other weights?)"
        )
    return encoder


def _batches(store: EmbeddingStore, rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Patch pixels in batches of ``batch_size`` rows (the last may be shorter), read a few
    batches ahead by a background thread in blocks of whole chunks (`slot_batches`), so that no
    chunk is read twice where a batch boundary falls inside it."""
    read = store.patch_store.read_rows
    blocks = prefetched(map(read, slot_batches(rows, batch_size)), PREFETCH_BATCHES)
    pending = np.zeros((0, PATCH_SIZE, PATCH_SIZE), np.uint8)
    with contextlib.closing(blocks):  # stops the reader thread when the encode stops early
        for block in blocks:
            pending = np.concatenate([pending, block])
            while len(pending) >= batch_size:
                yield pending[:batch_size]
                pending = pending[batch_size:]
    if len(pending):
        yield pending


def _local_vectors(
    store: EmbeddingStore, encoder: Encoder, rows: np.ndarray, batch_size: int
) -> Iterator[np.ndarray]:
    """Embeddings of ``rows`` batch by batch, computed in this process."""
    device = encoder.device
    with inference_context(device):
        for pixels in _batches(store, rows, batch_size):
            x = torch.from_numpy(pixels)
            if device.type == "cuda":
                x = x.pin_memory()
            yield encoder(x.to(device, non_blocking=True)).cpu().numpy()


def _register_model(store: EmbeddingStore, encoder: Encoder, table: str) -> None:
    if any(e.model_id == encoder.model_id for e in store.encoders()):
        return
    row = {
        "model_id": encoder.model_id,
        "arch": encoder.config.arch,
        "img_size": encoder.config.img_size,
        "embedding_dim": encoder.embedding_dim,
        "config": json.dumps(encoder.config.as_dict(), sort_keys=True),
        "weights_source": encoder.weights_source,
        "weights_format": encoder.weights_format,
        "random_init": encoder.random_init,
        "table": table,
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }
    models = store.patch_store.table("models", create=load_schema("models"))
    store.patch_store.register_table("models")
    lance.upsert(models, lance.to_arrow([row], "models"), "model_id")


def encode(
    store_path: str | Path,
    encoder: Encoder,
    batch_size: int = 64,
    wait: bool = False,
    progress: Progress | None = None,
    commit_every: int = 2048,
    cluster: Cluster | None = None,
) -> EncodeReport:
    """Embed the store's patches that lack an embedding for ``encoder``; see the module doc.
    With ``cluster`` the encoder runs on Dask workers (`pipelines.encode_workers`); this process
    still writes every row."""
    start = time.perf_counter()
    # The one writer: its tables, opened under the lock through store.table, never re-check
    # for versions of other processes (a LIST request each on object storage).
    store = EmbeddingStore(store_path, consistency=None)
    dim = encoder.embedding_dim
    name = embeddings_table_name(dim)
    schema = embeddings_schema(dim)
    with writer_lock(store.path, wait=wait), contextlib.ExitStack() as stack:
        # The cluster first: one that cannot run the encoder fails before anything is written.
        remote = None
        if cluster is not None:
            location = store.path.absolute()  # workers may run in another folder
            remote = stack.enter_context(remote_encoder(cluster, location, encoder))
        table = store.patch_store.table(name, create=schema)
        store.patch_store.register_table(name)
        _register_model(store, encoder, name)
        patches = store.query("patches").select(*META_COLUMNS, "row").to_polars()
        # Embeddings of patches that ingest has since replaced (changed files) are stale.
        stale = lance.read(table, ["patch_id"]).join(patches, on="patch_id", how="anti")
        removed = lance.delete_where_in(table, "patch_id", stale["patch_id"].to_list())
        done = lance.read(table, ["patch_id"], where=col("model_id") == encoder.model_id)
        todo = patches.join(done, on="patch_id", how="anti").sort("row")
        meta = todo.select(META_COLUMNS).to_arrow()
        rows = todo["row"].to_numpy()
        if remote is None:
            batches = _local_vectors(store, encoder, rows, batch_size)
        else:
            batches = remote.vectors(rows, batch_size)
        encoded = _commit_batches(table, batches, meta, encoder.model_id, schema, commit_every,
                                  progress)  # fmt: skip
        if encoded or removed:
            lance.compact(table, deleted=bool(removed))
        update_sequence_embeddings(store, encoder.model_id)
    seconds = time.perf_counter() - start
    return EncodeReport(
        patches_encoded=encoded,
        patches_skipped=patches.height - todo.height,
        stale_removed=removed,
        seconds=seconds,
        patches_per_s=encoded / seconds if seconds else 0.0,
        model_id=encoder.model_id,
        weights=encoder.weights_source,
        weights_format=encoder.weights_format,
        random_init=encoder.random_init,
        arch=encoder.config.arch,
        embedding_dim=dim,
        table=name,
        device=remote.describe() if remote else str(encoder.device),
        workers=remote.workers if remote else 0,
    )


def _commit_batches(
    table: Any,
    batches: Iterator[np.ndarray],
    meta: pa.Table,
    model_id: str,
    schema: pa.Schema,
    commit_every: int,
    progress: Progress | None,
) -> int:
    """Add each batch's vectors with their ``meta`` rows (in order), one commit per
    ``commit_every`` rows and one for the rest; returns how many rows were added."""
    pending: list[pa.Table] = []
    encoded = 0
    for vectors in batches:
        pending.append(embedding_rows(meta.slice(encoded, len(vectors)), vectors, model_id, schema))
        encoded += len(vectors)
        if sum(t.num_rows for t in pending) >= commit_every:
            table.add(pa.concat_tables(pending))
            pending = []
        if progress is not None:
            progress("encoding", encoded, meta.num_rows)
    if pending:
        table.add(pa.concat_tables(pending))
    return encoded


def embedding_rows(
    meta: pa.Table, vectors: np.ndarray, model_id: str, schema: pa.Schema
) -> pa.Table:
    """Arrow rows of the embeddings layout for one batch."""
    n, dim = vectors.shape
    # Aligned too: arrays unpickled from a Dask worker may not be, which Arrow rejects (a panic).
    flat = pa.array(np.require(vectors, np.float32, ["C_CONTIGUOUS", "ALIGNED"]).ravel())
    columns = {
        **{name: meta.column(name) for name in META_COLUMNS},
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "model_id": pa.array([model_id] * n, pa.string()),
        "created_at": pa.array([datetime.now(UTC).replace(tzinfo=None)] * n, pa.timestamp("us")),
    }
    return pa.table(columns).cast(schema)
