"""evaluate-encoder end to end on 100,000 patch embeddings x 1536 (issue 18: target <= 60 s).

Builds a real store holding one model's synthetic embeddings (25 lines x 4 batches x 2 wells,
25 images per well, 20 patches per image; a direction per line, per batch and per image plus
noise), then times ``pipelines.evaluate_encoder.evaluate_encoders`` (read, image and sequence
means, health and cross-batch metrics at three levels, the ``encoder_evals`` write) and, in the
same run, a baseline: one bare float32 matrix product of the patch level's size (the sampled
queries x every row x 1536), the arithmetic every patch-level metric needs.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluate_encoder.py [--patches N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from clanet_store.learn.encoder_metrics import MAX_QUERIES
from clanet_store.pipelines.encode import META_COLUMNS, embedding_rows
from clanet_store.pipelines.evaluate_encoder import evaluate_encoders
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import embeddings_schema
from clanet_store.stores.patch_store import PatchStore

LINES, BATCHES, WELLS, PATCHES_PER_IMAGE, DIM = 25, 4, 2, 20, 1536
MODEL_ID = "bench-model"


def model_store(path: Path) -> tuple[PatchStore, lance.lancedb.table.Table, pa.Schema]:
    """A new store with the synthetic model ``MODEL_ID`` registered and its (empty) 1536-d
    embeddings table, and that table's schema."""
    store = PatchStore(path, create=True)
    models = lance.open_table(store.db, "models", create=True)
    store.register_table("models")
    now = datetime.now(UTC).replace(tzinfo=None)
    row = {"model_id": MODEL_ID, "arch": "synthetic", "img_size": 112, "embedding_dim": DIM,
           "config": "{}", "weights_source": "synthetic", "weights_format": "timm",
           "random_init": False, "table": "embeddings", "created_at": now}  # fmt: skip
    lance.upsert(models, lance.to_arrow([row], "models"), "model_id")
    schema = embeddings_schema(DIM)
    table = lance.open_table(store.db, "embeddings", create=True, schema=schema)
    store.register_table("embeddings")
    return store, table, schema


def build_store(path: Path, patches: int, seed: int = 0) -> None:
    """A store with ``patches`` synthetic embeddings of one model (module doc)."""
    rng = np.random.default_rng(seed)
    images = patches // PATCHES_PER_IMAGE
    wells = LINES * BATCHES * WELLS
    image = np.arange(images)
    well = image % wells
    line, batch = well // (BATCHES * WELLS), (well // WELLS) % BATCHES
    _, table, schema = model_store(path)
    line_dirs = rng.standard_normal((LINES, DIM), dtype=np.float32)
    batch_dirs = rng.standard_normal((LINES * BATCHES, DIM), dtype=np.float32)
    step = 10_000 // PATCHES_PER_IMAGE
    for start in range(0, images, step):
        im = image[start : start + step]
        p = np.repeat(im, PATCHES_PER_IMAGE)
        n = len(p)
        x = (
            line_dirs[line[p]]
            + batch_dirs[line[p] * BATCHES + batch[p]]
            + 2 * rng.standard_normal((n, DIM), dtype=np.float32)
        )
        meta = {
            "patch_id": [
                f"p{v}" for v in range(start * PATCHES_PER_IMAGE, start * PATCHES_PER_IMAGE + n)
            ],
            "image_id": [f"i{v}" for v in p],
            "cell_line": [f"L{v}" for v in line[p]],
            "batch": [f"b{v}" for v in batch[p]],
            "experiment": [f"b{v}" for v in batch[p]],
            "well": [f"W{v}" for v in well[p] % WELLS],
            "location": np.ones(n, np.int32),
            "crop": pa.nulls(n, pa.int32()),
            "sequence_id": [f"s{v}" for v in well[p]],
            "timepoint_h": (p // wells).astype(np.float64),
            "rank": np.tile(np.arange(PATCHES_PER_IMAGE, dtype=np.int16), len(im)),
            "density": np.ones(n, np.float32),
        }
        table.add(embedding_rows(pa.table(meta).select(META_COLUMNS), x, MODEL_ID, schema))
    table.optimize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        start = time.perf_counter()
        build_store(path, args.patches)
        print(f"store with {args.patches} x {DIM} embeddings built in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        start = time.perf_counter()
        (evaluation,) = evaluate_encoders(path)
        total = time.perf_counter() - start
    rng = np.random.default_rng(1)
    x = rng.standard_normal((args.patches, DIM), dtype=np.float32)
    start = time.perf_counter()
    _ = x[:MAX_QUERIES] @ x.T
    bare = time.perf_counter() - start
    for level, ev in evaluation.levels.items():
        m = ev.metrics
        print(
            f"  {level:8s} rows {ev.rows:6d} queries {m.queries:5d} "
            f"knn {m.knn_accuracy_cross_batch:.3f} (chance {m.knn_accuracy_cross_batch_chance:.3f})"
            f" map {m.map_cross_batch:.3f} (chance {m.map_cross_batch_chance:.3f}) "
            f"batch effect {m.batch_effect_index}"
        )
    print(f"evaluate-encoder: {total:.1f} s end to end (target <= 60 s); baseline, one bare "
          f"{MAX_QUERIES} x {args.patches} x {DIM} matrix product: {bare:.1f} s; "
          f"ratio {total / bare:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
