"""One MIL training epoch: batched Eq. 14 (one padded forward/backward per mini-batch) vs per bag.

The paper's training split: 700 sequences of 40 images x 10 patches x 1536 (random embeddings,
image intervals of 1-8 h so TSS has something to sample). Both ways run the same epoch plan (same
shuffling and TSS samples) from the same initial weights, with `training.train_epoch`; one
untimed mini-batch warms each up. The two alternate ``--repeats`` times with a measurement of the
machine's sgemm rate (the machine is shared: the best of each is the least disturbed). Prints
seconds per epoch and GFLOP/s (the epoch's FLOPs: the 1536 -> 256 projection and its weight
gradient over the instances TSS keeps, 4 * D * 256 each), the ratio, the bound sgemm puts on it
(no schedule of the same FLOPs beats an epoch of pure sgemm at the best rate seen), and the
projection to the paper's 2000 epochs.

Run: ``.venv/bin/python benchmarks/bench_mil.py [--bags 700] [--threads 2] [--repeats 3]``
(``--no-tss``: full sequences).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from clanet_store.learn.aggregators import ATTENTION_DIM
from clanet_store.learn.bags import Bag
from clanet_store.learn.training import (
    MILConfig,
    MiniBatch,
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


def epoch_plan(bags: list[Bag], config: MILConfig) -> list[MiniBatch]:
    """The epoch both ways run: the bags shuffled and TSS-sampled from ``config.seed``."""
    prior = fit_interval_prior([b.times for b in bags]) if config.tss else None
    mus = np.array([floor_mean_gap(b.times) for b in bags])
    return plan_epoch(bags, mus, prior, config, np.random.default_rng(config.seed))


def epoch_gflop(batches: list[MiniBatch], k: int, dim: int) -> float:
    """GFLOP of the projection (V and U) and its weight gradient over the instances used."""
    n_images = sum(
        len(bag.times) if index is None else len(index)
        for batch in batches
        for bag, index in zip(batch.bags, batch.indices, strict=True)
    )
    return n_images * k * 2 * (2 * dim * 2 * ATTENTION_DIM) / 1e9


def sgemm_gflops(rows: int, dim: int, repeats: int = 5) -> tuple[float, float]:
    """Best GFLOP/s of the projection's two GEMMs (``rows`` instances) and of a 2048^3 sgemm."""
    weight = torch.randn(2 * ATTENTION_DIM, dim)
    x, grad = torch.randn(rows, dim), torch.randn(2 * ATTENTION_DIM, rows)
    square = torch.randn(2048, 2048)

    def best_rate(product: Callable[[], object], flop: float) -> float:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            seconds.append(time.perf_counter() - start)
        return flop / min(seconds) / 1e9

    projection = best_rate(lambda: (weight @ x.T, grad @ x), 2 * 2 * rows * dim * 2 * ATTENTION_DIM)
    return projection, best_rate(lambda: square @ square, 2 * 2048**3)


def epoch_seconds(
    batches: list[MiniBatch],
    config: MILConfig,
    dim: int,
    backward: Callable[..., tuple[float, int]],
) -> float:
    """Wall time of one epoch with ``backward``, after one untimed warm-up mini-batch."""
    model = init_model(config, dim, N_CLASSES)
    optimizer = make_optimizer(model, config)
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
    batches = epoch_plan(bags, config)
    gflop = epoch_gflop(batches, args.patches, args.dim)
    print(
        f"{args.bags} bags x {args.images} images x {args.patches} patches x {args.dim}, "
        f"gated attention, TSS {'on' if args.tss else 'off'}, {config.batch_bags} bags per step; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(load {os.getloadavg()[0]:.1f}), torch {torch.__version__} ({args.threads} threads)"
    )
    times: dict[str, list[float]] = {"batched": [], "per bag": []}
    rates: dict[str, list[float]] = {"projection": [], "square": []}
    loads = []
    for _ in range(args.repeats):
        times["batched"].append(epoch_seconds(batches, config, args.dim, batched_backward))
        times["per bag"].append(epoch_seconds(batches, config, args.dim, per_bag_backward))
        projection, square = sgemm_gflops(config.batch_bags * args.images * args.patches, args.dim)
        rates["projection"].append(projection)
        rates["square"].append(square)
        loads.append(round(os.getloadavg()[0], 1))
    print(f"epoch   : {gflop:.0f} GFLOP; load after each repeat: {', '.join(map(str, loads))}")
    for name, seconds in times.items():
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        print(
            f"{name:8s}: best {min(seconds):7.2f} s/epoch = {gflop / min(seconds):5.1f} GFLOP/s "
            f"(runs: {runs})"
        )
    for name, gflops in rates.items():
        runs = ", ".join(f"{r:.0f}" for r in gflops)
        print(f"sgemm   : {name:10s} best {max(gflops):5.1f} GFLOP/s (runs: {runs})")
    batched, per_bag = min(times["batched"]), min(times["per bag"])
    floor = gflop / max(max(r) for r in rates.values())
    print(
        f"ratio   : {per_bag / batched:.2f} x (best vs best); bound: per bag / an epoch of pure "
        f"sgemm at the best rate ({floor:.2f} s) = {per_bag / floor:.2f} x"
    )
    print(
        f"{PAPER_EPOCHS} epochs: batched {PAPER_EPOCHS * batched / 3600:.1f} h, "
        f"per bag {PAPER_EPOCHS * per_bag / 3600:.1f} h"
    )


if __name__ == "__main__":
    main()
