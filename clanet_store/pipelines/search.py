"""Similarity search of patches across batches, and the indexes that make it fast.

``build_index`` adds scalar indexes on the columns filters use and, above ``EXACT_BELOW`` rows, an
IVF_RQ vector index (cosine; RaBitQ codes of 1 bit per dimension) with ``sqrt(n) / 2`` partitions.
Below the threshold a search is exact (LanceDB scans every row). Rows added after
an index build are still found: LanceDB scans the unindexed rows too; the next ``index`` folds
them in. ``search`` answers ``clanet-store search`` (a stored patch or a new image's patches);
the nearest-neighbour queries themselves are ``EmbeddingStore.search``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from math import isqrt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from lancedb.expr import Expr
from lancedb.index import Bitmap, BTree, IvfRq

from clanet_store.errors import ClanetError
from clanet_store.imaging.ccs import PATCH_SIZE
from clanet_store.imaging.decode import ImageDecodeError, read_grey
from clanet_store.imaging.draw import draw_gallery
from clanet_store.imaging.extract import extract
from clanet_store.models.device import inference_context
from clanet_store.models.protocol import Encoder
from clanet_store.pipelines.encode import encoder_for_model
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.filters import parse_filters
from clanet_store.stores.lock import writer_lock

EXACT_BELOW = 100_000
# The fewest IVF partitions LanceDB trains with hierarchical k-means (see index_parameters).
HIERARCHICAL_KMEANS = 257
KEEP_VERSIONS = timedelta(hours=1)  # readers of an older version get this long to finish
# Bitmaps for the few-valued columns filters use, B-trees for ids.
SCALAR_INDEXES = {
    "cell_line": Bitmap,
    "batch": Bitmap,
    "well": Bitmap,
    "model_id": Bitmap,
    "image_id": BTree,
    "patch_id": BTree,
}


def index_parameters(rows: int) -> dict[str, int]:
    """IVF partitions (~sqrt(rows) / 2), bits per dimension of the RaBitQ codes, k-means effort.

    IVF_RQ rather than IVF_PQ (1 M x 1536, 500 partitions, nprobes 8; BENCHMARKS.md): comparing
    the ~33,000 codes of 8 partitions takes 2.4-2.9 ms instead of 16.5-25 ms (``analyze_plan``),
    and 10 x k candidates re-ranked give recall@10 1.000 where IVF_PQ (96 sub-vectors) needed
    30 x k for 0.956 across batches; the bare query's median fell from 37 to 13-14 ms, and the
    build from 415 s to 167-211 s.

    k-means effort (100,000 x 1536, 2 shared cores at load ~6): with LanceDB's defaults (50
    iterations, 256 training rows per centroid) and sqrt(rows) partitions the build took 1022 s;
    10 iterations and 64 rows per centroid with sqrt(rows) / 2 partitions 174 s, same recall.

    At least ``HIERARCHICAL_KMEANS`` partitions once there are 256 rows for each: LanceDB trains
    up to 256 partitions with flat k-means, which on 200,000 x 1536 (223 partitions) put ~75 %
    of the rows into the 8 partitions nearest a query, so nprobes 8 scanned most of the table
    (with a broad filter, 150 ms per search); above 256 its hierarchical k-means gives balanced
    partitions (300 partitions: ~6,000 rows scanned, 40 ms at load ~7).
    """
    partitions = max(1, min(4096, isqrt(rows) // 2))
    if rows >= 256 * HIERARCHICAL_KMEANS:
        partitions = max(partitions, HIERARCHICAL_KMEANS)
    return {"num_partitions": partitions, "num_bits": 1, "max_iterations": 10, "sample_rate": 64}


@dataclass(frozen=True)
class IndexReport:
    """What ``index`` built: the table, its rows, the vector index's parameters (empty when the
    table is small enough for exact search) and the scalar indexes."""

    table: str
    model_id: str
    rows: int
    vector_params: dict[str, Any]
    scalar_indexes: list[str]
    table_version: int
    seconds: float

    @property
    def vector_index(self) -> bool:
        return bool(self.vector_params)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "model_id": self.model_id,
            "rows": self.rows,
            "vector_index": self.vector_index,
            **self.vector_params,
            "scalar_indexes": self.scalar_indexes,
            "table_version": self.table_version,
            "seconds": self.seconds,
        }


def build_index(
    store_path: str | Path,
    model_id: str | None = None,
    exact_below: int = EXACT_BELOW,
    wait: bool = False,
) -> IndexReport:
    """Scalar and vector indexes on one model's embeddings table; compact and prune versions."""
    start = time.perf_counter()
    store = EmbeddingStore(store_path)
    model = store.encoder(model_id)
    with writer_lock(store.path, wait=wait):
        table = store.table(model.table)
        for name in ("images", "patches", model.table):
            store.table(name).optimize(cleanup_older_than=KEEP_VERSIONS)
        rows = table.count_rows()
        for column, kind in SCALAR_INDEXES.items():
            table.create_index(column, config=kind(), replace=True)
        # search reads images missing from its memo (EmbeddingStore._image_rows) by image_id:
        # with this B-tree 5 ms instead of a scan, 8 ms on 10,000 images (load ~5).
        store.table("images").create_index("image_id", config=BTree(), replace=True)
        params: dict[str, Any] = {}
        if rows >= max(exact_below, 1):
            params = index_parameters(rows)
            table.create_index("embedding", config=IvfRq(distance_type="cosine", **params))
        table.optimize(cleanup_older_than=KEEP_VERSIONS)
    return IndexReport(
        model.table,
        model.model_id,
        rows,
        params,
        sorted(SCALAR_INDEXES),
        table.version,
        time.perf_counter() - start,
    )


def neighbours_of_image(
    store: EmbeddingStore,
    encoder: Encoder,
    grey: np.ndarray,
    k: int = 10,
    box: tuple[int, int] | None = None,
    n_patches: int = 10,
    where: Expr | None = None,
) -> list[tuple[dict, np.ndarray, pl.DataFrame]]:
    """Neighbours of a new image's patches: its top CCS patches, or the patch at ``box`` (x, y).

    Returns one (query keys, query pixels, results) triple per query patch.
    """
    if box is not None:
        x, y = box
        h, w = grey.shape
        if not (0 <= x <= w - PATCH_SIZE and 0 <= y <= h - PATCH_SIZE):
            raise ClanetError(f"box {x},{y} does not fit a {PATCH_SIZE}-px patch in {w} x {h}")
        boxes = [{"x": x, "y": y, "rank": None}]
        pixels = grey[None, y : y + PATCH_SIZE, x : x + PATCH_SIZE]
    else:
        found = extract(grey, k=n_patches)
        boxes = [{"x": int(b["x"]), "y": int(b["y"]), "rank": int(b["rank"])} for b in found.boxes]
        pixels = found.patches
    if len(pixels) == 0:
        raise ClanetError("the image has no cell patches to search with (empty mask)")
    with inference_context(encoder.device):
        vectors = encoder(torch.from_numpy(np.ascontiguousarray(pixels)).to(encoder.device))
    vectors = vectors.cpu().numpy()
    return [
        (keys, px, store.search(v, k, where, model_id=encoder.model_id))
        for keys, px, v in zip(boxes, pixels, vectors, strict=True)
    ]


def gallery_row(
    store: EmbeddingStore, keys: dict, pixels: np.ndarray, found: pl.DataFrame
) -> list[tuple[np.ndarray, str]]:
    """A `draw_gallery` row: the query patch, then each neighbour labelled with line / batch,
    time and distance (``keys``: the query's cell_line and batch, or its x and y in a new image)."""
    neighbours = store.patch_store.pixels(found["patch_id"].to_list())
    labels = [
        f"{r['cell_line']} / {r['batch']}\n{r['timepoint_h']:.1f} h, d={r['distance']:.3f}"
        for r in found.iter_rows(named=True)
    ]
    where = (
        f"{keys['cell_line']} / {keys['batch']}"
        if "cell_line" in keys
        else f"x={keys['x']} y={keys['y']}"
    )
    return [(pixels, f"query\n{where}"), *zip(neighbours, labels, strict=True)]


@dataclass(frozen=True)
class SearchQuery:
    """One query patch: ``keys`` (a stored patch's patch_id, cell_line, batch and image_id, or
    a new image's patch x, y and CCS rank), its ``pixels`` and the neighbours ``found``."""

    keys: dict[str, Any]
    pixels: np.ndarray
    found: pl.DataFrame


@dataclass(frozen=True)
class SearchResult:
    """What ``search`` found, query by query; ``gallery`` the PNG it drew, if asked."""

    model_id: str
    queries: list[SearchQuery]
    gallery: str | None

    def results(self) -> pl.DataFrame:
        """Every query's neighbours in one frame, with the query's index in ``query``."""
        return pl.concat(
            [q.found.with_columns(query=pl.lit(i)) for i, q in enumerate(self.queries)],
            how="vertical_relaxed",
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "queries": [q.keys for q in self.queries],
            "results": self.results().to_dicts(),
            "gallery": self.gallery,
        }


def search(
    store_path: str | Path,
    *,
    patch_id: str | None = None,
    image: str | Path | None = None,
    box: tuple[int, int] | None = None,
    k: int = 10,
    where: Sequence[str] = (),
    other_batches: bool = False,
    model_id: str | None = None,
    weights: str | Path | None = None,
    gallery: str | Path | None = None,
) -> SearchResult:
    """The ``k`` patches most similar (cosine) to a stored patch, or to each of a new image's
    CCS patches (or its patch at ``box``), among the rows the typed filters ``where`` select
    (``other_batches``: not of the stored patch's batch); ``gallery``: also draw them (PNG).
    A new image is embedded by the encoder that wrote the model's embeddings
    (`encoder_for_model`, ``weights`` for a trained one)."""
    if (patch_id is None) == (image is None):
        raise ClanetError("search needs exactly one of a stored patch id and a new image")
    store = EmbeddingStore(store_path)
    model = store.encoder(model_id)
    condition = parse_filters(where, store.table(model.table).schema)
    if patch_id is not None:
        found = store.search(patch_id, k, condition, model.model_id, other_batches)
        keys = store.patch_keys(patch_id, model.model_id)
        query = {"patch_id": patch_id, **{c: keys[c] for c in ("cell_line", "batch", "image_id")}}
        queries = [SearchQuery(query, store.patch_store.pixels([patch_id])[0], found)]
    else:
        if other_batches:
            raise ClanetError(f"{image}: a new image has no batch to exclude (other_batches)")
        try:
            grey = read_grey(image)
        except (ImageDecodeError, OSError) as exc:
            raise ClanetError(str(exc)) from None
        encoder = encoder_for_model(model, weights)
        queries = [
            SearchQuery(*triple)
            for triple in neighbours_of_image(store, encoder, grey, k, box, where=condition)
        ]
    if gallery is not None:
        draw_gallery([gallery_row(store, q.keys, q.pixels, q.found) for q in queries], gallery)
    return SearchResult(model.model_id, queries, None if gallery is None else str(gallery))
