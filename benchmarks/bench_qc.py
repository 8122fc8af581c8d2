"""Drift test cost on 10,000 vs 100,000 embeddings (issue 10), measured in one run.

Synthetic 1536-d embeddings (the ViT-S/8 width) in images of 10 patches (K = 10), half reference
and half new, the new half slightly shifted. For each size, times `qc.drift.pooled_gram` (bandwidth
+ the blocked O(N^2 D) kernel pass, reduced to image x image sums) and `qc.drift.drift_test`
(1000 permutations of whole images, O(P g^2)), and prints both sizes, their ratio (quadratic
scaling predicts 100x) and the peak resident memory. 100,000 pooled rows is the default
``max_rows``: a 100,000 x 100,000 kernel, computed without subsampling.

Run: ``.venv/bin/python benchmarks/bench_qc.py [--sizes 10000 100000] [--dim 1536]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch

from clanet_store.qc.drift import drift_test, pooled_gram

PATCHES_PER_IMAGE = 10


def embeddings(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Reference and new rows (n / 2 each) with image labels; images share a random offset."""
    rng = np.random.default_rng(seed)
    half = n // 2
    images = half // PATCHES_PER_IMAGE

    def side(shift: float) -> np.ndarray:
        centres = rng.normal(0, 0.5, (images, dim)).astype(np.float32)
        noise = rng.standard_normal((half, dim), dtype=np.float32)
        return np.repeat(centres, PATCHES_PER_IMAGE, axis=0) + noise + np.float32(shift)

    groups = np.repeat(np.arange(images), PATCHES_PER_IMAGE)
    return side(0.0), side(0.02), groups, groups + images


def run(n: int, dim: int, permutations: int) -> dict:
    x, y, xg, yg = embeddings(n, dim)
    start = time.perf_counter()
    gram = pooled_gram(x, y, xg, yg, max_rows=max(n, 100_000))
    kernel = time.perf_counter() - start
    start = time.perf_counter()
    result = drift_test(gram, permutations)
    test = time.perf_counter() - start
    return {"n": n, "kernel": kernel, "test": test, "total": kernel + test, "p": result.p_value,
            "mmd": result.mmd, "groups": len(gram.sizes)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(10_000, 100_000))
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--permutations", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load {os.getloadavg()[0]:.1f}"
    )
    print(f"{args.dim}-d embeddings, {PATCHES_PER_IMAGE} patches per image, half reference / half "
          f"new, {args.permutations} permutations of whole images")  # fmt: skip
    rows = [run(n, args.dim, args.permutations) for n in args.sizes]
    for r in rows:
        print(
            f"{r['n']:>7} embeddings ({r['groups']:>5} images): kernel {r['kernel']:8.2f} s + "
            f"permutations {r['test']:6.2f} s = {r['total']:8.2f} s   (MMD^2 {r['mmd']:.3g}, "
            f"p {r['p']:.3g})"
        )
    small, large = rows
    print(
        f"ratio {large['n']} / {small['n']}: {large['total'] / small['total']:.1f}x total "
        f"(kernel {large['kernel'] / small['kernel']:.1f}x, permutations "
        f"{large['test'] / small['test']:.1f}x; quadratic = {(large['n'] / small['n']) ** 2:.0f}x)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak resident memory: {peak:.2f} GB; load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
