"""Reading MIL bags from the store vs training on them, per epoch (issue 8: <= 10 % after epoch 1).

The paper's training split: 700 sequences of 40 images x 10 patches x 1536 (32 cell lines, 3
batches each). The store is built directly, NOT by ingest + encode: standard-normal float32 vectors
are written into its ``embeddings`` table with the metadata columns of real rows (the ``patches``
table gets the matching rows, because `load_bags` only counts patches it lists, and ``models`` a
random-init encoder row). Images are written in shuffled order, so assembling the bags is a real
gather. Image intervals are 1-8 h, so TSS has something to sample.

Measured: `load_bags` (LanceDB scan -> polars -> one (images, k, D) block; best of ``--repeats``
with a fresh store object each time), then ``--epochs`` epochs of `train_mil` (gated attention +
TSS, the reference SGD). The bags stay in memory, so after the first epoch nothing is read from
the store again; what an epoch still spends on data is assembling its mini-batches (the TSS plan
and the padded copy of `collate`), timed separately on the same bags.

Run: ``.venv/bin/python benchmarks/bench_mil_store.py [--store DIR] [--epochs 3] [--threads 2]``
(``--store``: build there once and reuse; default a temporary directory, removed afterwards).
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
import torch

from clanet_store.learn.bags import collate
from clanet_store.learn.training import MILConfig, plan_epoch, train_mil
from clanet_store.learn.tss import fit_interval_prior, floor_mean_gap
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore, embeddings_schema
from clanet_store.stores.patch_store import PatchStore
from clanet_store.stores.sequences import load_bags

MODEL_ID = "bench0000random0"
N_LINES = 32
BATCHES_PER_LINE = 3
GAPS_HOURS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
IMAGES_PER_WRITE = 2000


def image_rows(n_sequences: int, n_images: int, seed: int) -> list[dict]:
    """Metadata of every image: sequence i belongs to cell line i % 32 and one of its batches."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sequences):
        line, batch = s % N_LINES, (s // N_LINES) % BATCHES_PER_LINE
        gap = rng.choice(GAPS_HOURS)
        for t in range(n_images):
            rows.append(
                {
                    "image_id": f"img{s:04d}-{t:03d}",
                    "cell_line": f"line{line:02d}",
                    "batch": f"b{batch}",
                    "experiment": f"exp{batch}",
                    "well": f"B{s // (N_LINES * BATCHES_PER_LINE) + 1}",
                    "location": 1,
                    "crop": None,
                    "sequence_id": f"seq{s:04d}",
                    "timepoint_h": float(t * gap),
                }
            )
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def build_store(path: Path, n_sequences: int, n_images: int, k: int, dim: int) -> None:
    """A store holding only what `load_bags` reads: models, patches and embeddings rows."""
    store = PatchStore(path, create=True)
    models = lance.open_table(store.db, "models", create=True)
    store.register_table("models")
    row = {
        "model_id": MODEL_ID, "arch": "vit_small_patch8_224", "img_size": 112,
        "embedding_dim": dim, "config": "{}", "weights_source": "random vectors (benchmark)",
        "weights_format": "random-init", "random_init": True, "table": "embeddings",
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }  # fmt: skip
    lance.upsert(models, lance.to_arrow([row], "models"), "model_id")
    embeddings = lance.open_table(
        store.db, "embeddings", create=True, schema=embeddings_schema(dim)
    )
    store.register_table("embeddings")
    rng = np.random.default_rng(1)
    images = image_rows(n_sequences, n_images, seed=0)
    for start in range(0, len(images), IMAGES_PER_WRITE):
        chunk = images[start : start + IMAGES_PER_WRITE]
        patches = [
            {**image, "patch_id": f"{image['image_id']}-{rank}", "rank": rank}
            for image in chunk
            for rank in range(k)
        ]
        columns = {name: [p[name] for p in patches] for name in patches[0]}
        n = len(patches)
        extra = {
            "content_hash": ["0"] * n, "x": [0] * n, "y": [0] * n, "w": [112] * n,
            "h": [112] * n, "density": [1.0] * n, "row": list(range(start * k, start * k + n)),
        }  # fmt: skip
        store.table("patches").add(lance.to_arrow(pa.table({**columns, **extra}), "patches"))
        vectors = rng.standard_normal((n, dim), dtype=np.float32).ravel()
        stamp = datetime.now(UTC).replace(tzinfo=None)
        table = pa.table(
            {
                **columns,
                "density": [1.0] * n,
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors), dim),
                "model_id": [MODEL_ID] * n,
                "created_at": pa.array([stamp] * n, pa.timestamp("us")),
            }
        )
        embeddings.add(lance.to_arrow(table, embeddings_schema(dim)))
    embeddings.optimize()


def assembly_seconds(bags: list, config: MILConfig) -> float:
    """One epoch's data work without the model: the TSS plan and the padded batches."""
    prior = fit_interval_prior([b.times for b in bags])
    mus = np.array([floor_mean_gap(b.times) for b in bags])
    start = time.perf_counter()
    for batch in plan_epoch(bags, mus, prior, config, np.random.default_rng(0)):
        collate(batch.bags, batch.indices)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--bags", type=int, default=700)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--patches", type=int, default=10)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-mil-store-") as tmp:
        path = args.store or Path(tmp) / "store"
        if not (path / "store.json").exists():
            start = time.perf_counter()
            build_store(path, args.bags, args.images, args.patches, args.dim)
            print(f"store built in {time.perf_counter() - start:.1f} s at {path}")
        print(
            f"{args.bags} bags x {args.images} images x {args.patches} patches x {args.dim}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load "
            f"{os.getloadavg()[0]:.1f}), torch {torch.__version__} ({args.threads} threads)"
        )
        loads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            bags, classes = load_bags(EmbeddingStore(path), k=args.patches, model_id=MODEL_ID)
            loads.append(time.perf_counter() - start)
            if len(loads) < args.repeats:
                del bags
        config = MILConfig(k=args.patches, epochs=args.epochs)
        assembly = assembly_seconds(bags, config)
        _, history = train_mil(bags, classes, config)
    epochs = [e["seconds"] for e in history["epochs"]]
    load, epoch = min(loads), min(epochs)
    print(f"load_bags     : best {load:6.2f} s (runs: {', '.join(f'{s:.2f}' for s in loads)})")
    print(f"training epoch: best {epoch:6.2f} s (runs: {', '.join(f'{s:.2f}' for s in epochs)})")
    print(
        f"first epoch   : loading = {100 * load / (load + epoch):.1f} % of load + epoch 1 (bests)"
    )
    print(
        f"later epochs  : store reads 0 s (bags cached in memory); batch assembly (TSS plan + "
        f"collate) {assembly:.2f} s = {100 * assembly / epoch:.1f} % of an epoch"
    )
    total = load + MILConfig.epochs * epoch
    print(f"{MILConfig.epochs} epochs   : the one load is {100 * load / total:.3f} % of the run")


if __name__ == "__main__":
    main()
