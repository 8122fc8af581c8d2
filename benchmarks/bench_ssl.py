"""DINO training throughput (patches/s per training step), fed by the loader versus in memory.

For each arch (the tiny ViT and ViT-S/8, both at 112 px, SPEC 5's head with 65536 outputs):

* ``memory``: `TrainState.step` over view batches made before the clock starts (the baseline);
* ``loader``: the same steps fed by `ssl_train`'s DataLoader: worker processes reading the Zarr
  store and running the multi-crop on the fly (the workers are started, untimed, beforehand).

The two alternate (memory, loader, memory, loader, ...) so that load from other processes hits
both alike; each rate is the median over the passes. Target (issue 6): the loader costs <= 10 %,
i.e. loader / memory >= 0.9. Also printed: the multi-crop alone, in this process, one core, and
its time per patch as a share of the training step's: the loader's cost if it had no core of its
own, a bound that does not move with the load other processes put on the machine.
The store is built from a few real images of ``../shared/data`` unless ``--store`` is given.

Run: ``.venv/bin/python benchmarks/bench_ssl.py [--threads N] [--workers N] [--passes N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from shared_data import AZGCB

from clanet_store.models.dino import (
    DinoConfig,
    MultiCrop,
    build_dino,
    build_loss,
    build_optimizer,
    schedule_at,
)
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.ssl_train import (
    EpochBatches,
    PatchViews,
    TrainState,
    default_workers,
    patch_loader,
    training_rows,
)
from clanet_store.stores.patch_store import PatchStore

# (arch, batch size, steps per pass): a pass takes some seconds on 2 busy cores.
ARCHS = (("vit_tiny_patch16_224", 16, 3), ("vit_small_patch8_224", 4, 2))


def real_store(dest: Path, n_images: int) -> Path:
    """A store of the first image of the first ``n_images`` cell lines (20 patches each)."""
    for line in sorted(p for p in AZGCB.iterdir() if p.is_dir())[:n_images]:
        (dest / "export" / line.name).mkdir(parents=True)
        first = sorted(line.iterdir())[0]
        shutil.copy(first, dest / "export" / line.name / first.name)
    ingest(dest / "export", dest / "store", workers=1)
    return dest / "store"


def timed_steps(state: TrainState, batches: Iterator[Sequence[torch.Tensor]], n: int) -> float:
    """Patches per second over ``n`` steps; the first batch is taken before the clock starts.

    From the loader, that first batch is the start of an epoch (in a real run, once per epoch of
    thousands of steps); every later one is made by the workers while the model trains.
    """
    values = schedule_at(DinoConfig(), 256, 0, 1, 1)
    views = next(batches)
    start = time.perf_counter()
    for i in range(n):
        state.step(views, values, freeze=False, clip_grad=0.0)
        if i < n - 1:
            views = next(batches)
    return n * len(views[0]) / (time.perf_counter() - start)


def bench_arch(
    store: PatchStore, arch: str, batch_size: int, steps: int, workers: int, passes: int
) -> dict[str, float]:
    """Median patches/s of ``passes`` alternating passes of ``steps`` steps, memory and loader."""
    dino = DinoConfig()
    batches = EpochBatches(training_rows(store, k=20, where=()), batch_size, seed=0)
    if len(batches) < steps:
        raise SystemExit(f"{len(batches.rows)} patches: fewer than {steps} batches of {batch_size}")
    memory = [PatchViews(store.array, MultiCrop(dino))[item] for item in batches][:steps]
    student, teacher = build_dino(arch, 112, dino)
    state = TrainState(student, teacher, build_loss(dino), build_optimizer(student))
    loader = patch_loader(store.array, batches, dino, workers, pin_memory=False)
    timed_steps(state, iter(memory), 1)  # warm-up: allocations, AdamW state
    timed_steps(state, iter(loader), 1)  # starts the (persistent) workers
    rates: dict[str, list[float]] = {"memory": [], "loader": []}
    for _ in range(passes):
        rates["memory"].append(timed_steps(state, iter(memory), steps))
        rates["loader"].append(timed_steps(state, iter(loader), steps))
    return {mode: statistics.median(values) for mode, values in rates.items()}


def crop_rate(store: PatchStore, n: int = 64) -> float:
    """Multi-crop views per patch, in this process (one core): the loader's own speed."""
    views = PatchViews(store.array, MultiCrop(DinoConfig()))
    rows = training_rows(store, k=20, where=())[:n]
    start = time.perf_counter()
    views[(0, rows)]
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an existing store (default: build one)")
    parser.add_argument("--images", type=int, default=4, help="real images for the built store")
    parser.add_argument("--threads", type=int, help="torch threads (default: cores - workers)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="loader processes")
    parser.add_argument("--passes", type=int, default=3, help="alternating passes per mode")
    parser.add_argument("--archs", nargs="+", default=[a for a, _, _ in ARCHS])
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads or max(1, cores - args.workers))
    with tempfile.TemporaryDirectory() as tmp:
        store = PatchStore(args.store or real_store(Path(tmp), args.images))
        print(
            f"{platform.processor() or platform.machine()}, {cores} cores "
            f"(load {os.getloadavg()[0]:.1f}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} training threads, {args.workers} loader workers; "
            f"{len(store.query('patches').to_numpy('row'))} patches in the store"
        )
        crop = crop_rate(store)
        print(f"multi-crop alone: {crop:.1f} patches/s on one core")
        for arch, batch_size, steps in ARCHS:
            if arch not in args.archs:
                continue
            r = bench_arch(store, arch, batch_size, steps, args.workers, args.passes)
            ratio = r["loader"] / r["memory"]
            print(
                f"{arch} batch {batch_size}: memory {r['memory']:.2f} patches/s, loader "
                f"{r['loader']:.2f} patches/s, loader/memory {ratio:.3f} "
                f"(loader cost {100 * (1 - ratio):+.1f} %, target <= 10 %); the multi-crop "
                f"takes {100 * r['memory'] / crop:.1f} % of the step time on one core"
            )


if __name__ == "__main__":
    main()
