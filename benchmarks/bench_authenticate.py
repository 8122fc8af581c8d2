"""authenticate at scale (issue 21): the sequence table from 1 M patch embeddings (target <= 60 s,
peak memory <= 4 GB) and 50 new sequences judged against 10,000 (target <= 1 s).

Builds a real store (``patches``, ``images`` and ``embeddings`` rows, no pixels) of random
1536-d vectors: 100 lines x 2 batches x 50 sequences x 10 images x 10 patches (a direction per
line and per batch plus noise). Then, each in a fresh process so that its peak resident memory
is its own:

1. ``update_sequence_embeddings(rebuild=True)`` builds the sequence table (10,000 rows);
   baseline: one bare streamed scan of the same vectors (the read the build cannot avoid).
2. ``authenticate_store`` on one batch (50 sequences, claimed as their line) against the other
   9,950, end to end (the staleness check of the sequence table included); and the same
   authentication without that check (``learn.authentication.calibrate`` + ``authenticate`` on the
   sequence table's vectors, read included); baseline: one brute-force float32 product of every
   calibration and query sequence against the library.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_authenticate.py [--lines 100]
[--store DIR]`` (``--store``: build the store there once and reuse it in later runs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from clanet_store.learn.authentication import MAX_CALIBRATION
from clanet_store.stores import lance
from clanet_store.stores.patch_store import SLOT_SIZE

BATCHES, SEQUENCES, IMAGES, PATCHES, DIM = 2, 50, 10, 10, 1536
MODEL_ID = "bench-model"  # as bench_evaluate_encoder.model_store registers it
CHUNK_SEQUENCES = 200  # sequences written per table commit (200,000 patches... x 1536 = 120 MB)


def _columns(seq: np.ndarray, lines: int) -> dict[str, object]:
    """Keys of the patches of sequences ``seq`` (each IMAGES x PATCHES, in order)."""
    per_seq = IMAGES * PATCHES
    s = np.repeat(seq, per_seq)
    image = s * IMAGES + np.tile(np.repeat(np.arange(IMAGES), PATCHES), len(seq))
    rank = np.tile(np.arange(PATCHES, dtype=np.int16), len(seq) * IMAGES)
    line, batch = s // (BATCHES * SEQUENCES), (s // SEQUENCES) % BATCHES
    n = len(s)
    return {
        "patch_id": [f"p{i}_{r}" for i, r in zip(image, rank, strict=True)],
        "image_id": [f"i{i}" for i in image],
        "content_hash": ["h"] * n,
        "cell_line": [f"L{v}" for v in line],
        "batch": [f"b{v}" for v in batch],
        "experiment": [f"b{v}" for v in batch],
        "well": [f"W{v % SEQUENCES}" for v in s],
        "location": np.ones(n, np.int32),
        "crop": pa.nulls(n, pa.int32()),
        "sequence_id": [f"s{v}" for v in s],
        "timepoint_h": (image % IMAGES).astype(np.float64),
        "rank": rank,
        "x": np.zeros(n, np.int32),
        "y": np.zeros(n, np.int32),
        "w": np.full(n, 112, np.int32),
        "h": np.full(n, 112, np.int32),
        "density": np.ones(n, np.float32),
        "row": image.astype(np.int64) * SLOT_SIZE + rank,
        "_line": line,
        "_batch": line * BATCHES + batch,
        "_image": image,
    }


def build_store(path: Path, lines: int, seed: int = 0) -> int:
    """The store of the module doc; returns the number of patch embeddings."""
    # torch (through pipelines.encode): imported by the parent only, not the measured children
    from bench_evaluate_encoder import model_store

    from clanet_store.pipelines.encode import META_COLUMNS, embedding_rows

    rng = np.random.default_rng(seed)
    store, embeddings, schema = model_store(path)
    now = datetime.now(UTC).replace(tzinfo=None)
    patches, images = store.table("patches"), store.table("images")
    line_dirs = rng.standard_normal((lines, DIM), dtype=np.float32)
    batch_dirs = rng.standard_normal((lines * BATCHES, DIM), dtype=np.float32)
    n_seq = lines * BATCHES * SEQUENCES
    total = 0
    for start in range(0, n_seq, CHUNK_SEQUENCES):
        cols = _columns(np.arange(start, min(start + CHUNK_SEQUENCES, n_seq)), lines)
        n = len(cols["rank"])
        x = (
            line_dirs[cols["_line"]]
            + 0.5 * batch_dirs[cols["_batch"]]
            + 2 * rng.standard_normal((n, DIM), dtype=np.float32)
        )
        meta = pa.table({k: v for k, v in cols.items() if not k.startswith("_")})
        patches.add(lance.to_arrow(meta, "patches"))
        first = np.flatnonzero(np.diff(cols["_image"], prepend=-1))
        image_rows = meta.take(first).select(["image_id", "content_hash", "cell_line", "batch"])
        m = image_rows.num_rows
        image_rows = image_rows.append_column(
            "path", pa.array([f"{v}.tif" for v in image_rows.column("image_id").to_pylist()])
        )
        for name, value in (("status", pa.array(["ok"] * m)),
                            ("patch_count", pa.array(np.full(m, PATCHES, np.int16))),
                            ("slot", pa.array(cols["_image"][first].astype(np.int64))),
                            ("extractor_version", pa.array(["x"] * m)),
                            ("ingested_at", pa.array([now] * m, pa.timestamp("us")))):  # fmt: skip
            image_rows = image_rows.append_column(name, value)
        schema_images = lance.to_arrow([], "images").schema
        full = {f.name: image_rows.column(f.name) if f.name in image_rows.column_names
                else pa.nulls(m, f.type) for f in schema_images}  # fmt: skip
        images.add(pa.table(full).cast(schema_images))
        embeddings.add(embedding_rows(meta.select(META_COLUMNS), x, MODEL_ID, schema))
        total += n
    for table in (patches, images, embeddings):
        table.optimize()
    return total


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _cpu_s() -> float:
    """CPU seconds of this process, all its threads (LanceDB reads on its own): on a shared
    machine the wall time also counts waiting for a core."""
    return time.process_time()


def _build(path: str) -> tuple[float, float, float, int]:
    from clanet_store.stores.embedding_store import EmbeddingStore
    from clanet_store.stores.sequence_embeddings import update_sequence_embeddings

    start, cpu = time.perf_counter(), _cpu_s()
    r = update_sequence_embeddings(EmbeddingStore(path), MODEL_ID, rebuild=True)
    return time.perf_counter() - start, _cpu_s() - cpu, _peak_gb(), r.sequences


def _scan(path: str) -> tuple[float, float, float, int]:
    from clanet_store.stores.embedding_store import EmbeddingStore
    from clanet_store.stores.sequence_embeddings import STREAM_ROWS

    start, cpu = time.perf_counter(), _cpu_s()
    store = EmbeddingStore(path)
    reader = store.table("embeddings").search().select(["sequence_id", "embedding"])
    rows = sum(b.num_rows for b in reader.limit(None).to_batches(STREAM_ROWS))
    return time.perf_counter() - start, _cpu_s() - cpu, _peak_gb(), rows


def _authenticate(path: str) -> tuple[float, float, float, float, float, str]:
    from clanet_store.learn.authentication import authenticate, calibrate
    from clanet_store.pipelines.authenticate import (
        authenticate_store,
        reference_library,
        sequence_filter,
    )
    from clanet_store.stores.embedding_store import EmbeddingStore
    from clanet_store.stores.sequence_embeddings import read_sequences

    new = ["cell_line=L0,batch=b0"]
    start, cpu = time.perf_counter(), _cpu_s()
    r = authenticate_store(path, new, claimed="L0", model_id=MODEL_ID)
    end_to_end, end_to_end_cpu = time.perf_counter() - start, _cpu_s() - cpu
    start = time.perf_counter()
    store = EmbeddingStore(path)
    keys, x = read_sequences(store, MODEL_ID)
    chosen = read_sequences(store, MODEL_ID, sequence_filter(new))[0]["row_id"].implode()
    is_new = keys["row_id"].is_in(chosen).to_numpy()
    library = reference_library(MODEL_ID, keys.filter(~is_new), x[~is_new])
    units = np.full(int(is_new.sum()), "L0/b0")
    authenticate(
        library, calibrate(library), x[is_new], units, ["L0"] * int(is_new.sum()),
        keys.filter(is_new)["sequence_id"].to_list(), MODEL_ID,
    )  # fmt: skip
    core = time.perf_counter() - start
    rng = np.random.default_rng(2)
    v = rng.standard_normal((len(x), DIM), dtype=np.float32)
    start = time.perf_counter()
    _ = v[: MAX_CALIBRATION + 50] @ v.T
    bare = time.perf_counter() - start
    verdict = r.result.batches[0]
    return end_to_end, end_to_end_cpu, core, bare, _peak_gb(), f"{verdict.verdict} ({verdict.line})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--store", type=Path, help="keep the store here; reuse it if it exists")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or Path(tmp) / "store"
        if not path.exists():
            start = time.perf_counter()
            n = build_store(path, args.lines)
            print(f"store with {n} x {DIM} patch embeddings built in "
                  f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        with spawn.Pool(1, maxtasksperchild=1) as pool:
            scan_s, scan_cpu, scan_gb, rows = pool.apply(_scan, (str(path),))
        with spawn.Pool(1, maxtasksperchild=1) as pool:
            build_s, build_cpu, build_gb, sequences = pool.apply(_build, (str(path),))
        print(f"sequence table: {sequences} sequences from {rows} patch embeddings in "
              f"{build_s:.1f} s ({build_cpu:.1f} CPU s), peak RSS {build_gb:.2f} GB (targets "
              f"<= 60 s, <= 4 GB); baseline, a bare streamed scan of the vectors: {scan_s:.1f} s "
              f"({scan_cpu:.1f} CPU s, peak {scan_gb:.2f} GB); ratio {build_s / scan_s:.1f}x; "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        with spawn.Pool(1, maxtasksperchild=1) as pool:
            e2e, e2e_cpu, core, bare, gb, verdict = pool.apply(_authenticate, (str(path),))
        print(f"authenticate 50 sequences against {sequences - 50}: {e2e:.2f} s end to end "
              f"({e2e_cpu:.2f} CPU s; staleness check included), {core:.2f} s without it "
              f"(target <= 1 s); load average {os.getloadavg()[0]:.1f}; peak "
              f"{gb:.2f} GB; baseline, one bare {MAX_CALIBRATION + 50} x {sequences} x {DIM} "
              f"product: {bare:.2f} s; ratio {core / bare:.1f}x; verdict {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
