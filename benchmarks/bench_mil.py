"""One MIL training epoch: batched Eq. 14 (one padded forward/backward per mini-batch) vs per bag.

The paper's training split: 700 sequences of 40 images x 10 patches x 1536 (random embeddings,
image intervals of 1-8 h so TSS has something to sample). Both ways run the same epoch plan (same
shuffling and TSS samples) from the same initial weights, with `training.train_epoch`; one
untimed mini-batch warms each up. The two alternate ``--repeats`` times (the machine is shared:
the best of each is the least disturbed). Prints seconds per epoch, the ratio, and the projection
to the paper's 2000 epochs.

Run: ``.venv/bin/python benchmarks/bench_mil.py [--bags 700] [--threads 2] [--repeats 3]``
(``--no-tss``: full sequences).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from clanet_store.learn.bags import Bag
from clanet_store.learn.training import (
    MILConfig,
    batched_backward,
    init_model,
    make_optimizer,
    per_bag_backward,
    plan_epoch,
    train_epoch,
)
from clanet_store.learn.tss import fit_interval_prior, floor_mean_gap

PAPER_EPOCHS = 2000
N_CLASSES = 32
GAPS_HOURS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def random_bags(n_bags: int, n_images: int, k: int, dim: int, seed: int = 0) -> list[Bag]:
    """Bags of standard-normal float32 embeddings, all patches present, a random regular gap."""
    rng = np.random.default_rng(seed)
    return [
        Bag(
            key=f"s{i}",
            label=i % N_CLASSES,
            batch=f"line{i % N_CLASSES}/b1",
            position=f"p{i}",
            times=np.arange(n_images) * rng.choice(GAPS_HOURS),
            embeddings=rng.standard_normal((n_images, k, dim), dtype=np.float32),
            mask=np.ones((n_images, k), dtype=bool),
        )
        for i in range(n_bags)
    ]


def epoch_seconds(bags: list[Bag], config: MILConfig, backward) -> float:
    """Wall time of one epoch with ``backward``, after one untimed warm-up mini-batch."""
    model = init_model(config, bags[0].embeddings.shape[2], N_CLASSES)
    optimizer = make_optimizer(model, config)
    prior = fit_interval_prior([b.times for b in bags]) if config.tss else None
    mus = np.array([floor_mean_gap(b.times) for b in bags])
    batches = plan_epoch(bags, mus, prior, config, np.random.default_rng(config.seed))
    train_epoch(model, optimizer, batches[:1], backward)
    start = time.perf_counter()
    train_epoch(model, optimizer, batches, backward)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=700)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--patches", type=int, default=10)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tss", dest="tss", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bags = random_bags(args.bags, args.images, args.patches, args.dim)
    config = MILConfig(tss=args.tss, k=args.patches)
    print(
        f"{args.bags} bags x {args.images} images x {args.patches} patches x {args.dim}, "
        f"gated attention, TSS {'on' if args.tss else 'off'}, {config.batch_bags} bags per step; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(load {os.getloadavg()[0]:.1f}), torch {torch.__version__} ({args.threads} threads)"
    )
    times: dict[str, list[float]] = {"batched": [], "per bag": []}
    for _ in range(args.repeats):
        times["batched"].append(epoch_seconds(bags, config, batched_backward))
        times["per bag"].append(epoch_seconds(bags, config, per_bag_backward))
    for name, seconds in times.items():
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{name:8s}: best {min(seconds):7.2f} s/epoch (runs: {runs})")
    batched, per_bag = min(times["batched"]), min(times["per bag"])
    print(f"ratio   : {per_bag / batched:.2f} x (best vs best)")
    print(
        f"{PAPER_EPOCHS} epochs: batched {PAPER_EPOCHS * batched / 3600:.1f} h, "
        f"per bag {PAPER_EPOCHS * per_bag / 3600:.1f} h"
    )


if __name__ == "__main__":
    main()
