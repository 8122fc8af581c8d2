"""``encode`` end to end against a bare forward pass of the same model, measured in one run.

Builds a store from real images (``--images`` of ../shared/data/azgcb_sample, 20 patches each),
then times, alternating to spread machine noise over both:

* ``bare``: `bench_forward.bare_forward_rate`, the same encoder, batch size and device over
  in-memory uint8 tensors (the baseline);
* ``encode``: `clanet_store.pipelines.encode.encode` on the store (Zarr reads in a background
  thread, LanceDB writes, the work list), a fresh copy of the store each round;
* ``classic``: ``encode --encoder classic`` end to end on a fresh copy: fitting the frozen
  statistics on the store's patches (`classic_encoder`, every core) plus `encode` at the CLI's
  default batch size. Its CPU time (all threads) is printed too: on a shared machine it says
  what the idle cores would give, where the wall-clock rate says what the load left.

Targets: encode >= 0.9x bare (issue 5); classic >= 300 patches/s on the 2-core machine (issue
18), printed as a ratio to the ViT's bare forward. Also prints the projected time for the
paper's 1.65 M patches. Run: ``.venv/bin/python benchmarks/bench_encode.py [--images 24]
[--rounds 2] [--encoders vit,classic]``; 24 images give 480 patches, so the fixed costs
(opening tables, the work list, the final compaction) weigh about as in real use rather than
dominating a 12-second run. ``--encoders classic`` skips the ViT's end-to-end encode (the bare
forward, the baseline, always runs; ``--bare-batches N`` shortens it).

``--workers 1,2`` (issue 22) also times `encode` on a Dask LocalCluster of each many
single-threaded worker processes (each encoder of ``--encoders``, a fresh store each), as the
steady rate from the first returned batch to the last (the cluster's start-up and the first
batch excluded), and prints each rate's ratio to the first count's. Target: 2 workers >= 1.7x
one, which needs two otherwise idle cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import PAPER_PATCHES, bare_forward_rate
from shared_data import AZGCB

from clanet_store.pipelines.encode import classic_encoder, encode, load_encoder
from clanet_store.pipelines.encode_workers import Cluster
from clanet_store.pipelines.ingest import ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="vit_small_patch8_224")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoders", default="vit,classic", help="end-to-end runs to time")
    parser.add_argument(
        "--bare-batches", type=int, help="batches of the bare forward (default: as many patches)"
    )
    parser.add_argument("--workers", help="e.g. 1,2: also time encode on Dask workers (see above)")
    args = parser.parse_args()
    encoders = args.encoders.split(",")
    encoder = load_encoder(None, args.arch, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export = tmp / "export"
        for path in sorted(AZGCB.rglob("*.jpg"))[: args.images]:
            (export / path.parent.name).mkdir(parents=True, exist_ok=True)
            (export / path.parent.name / path.name).symlink_to(path)
        ingest(export, tmp / "base", workers=1)
        rates: dict[str, list[float]] = {"bare forward": [], "encode": [], "classic": []}
        classic_cpu: list[float] = []
        patches = 0
        for r in range(args.rounds):
            if "vit" in encoders:
                report = encode(_fresh(tmp, r, "vit"), encoder, batch_size=args.batch_size)
                rates["encode"].append(report.patches_per_s)
            if "classic" in encoders:
                store = _fresh(tmp, r, "classic")
                start, cpu = time.perf_counter(), time.process_time()
                report = encode(store, classic_encoder(store))  # the CLI's default batch
                rates["classic"].append(report.patches_encoded / (time.perf_counter() - start))
                classic_cpu.append(report.patches_encoded / (time.process_time() - cpu))
            patches = report.patches_encoded
            n_batches = args.bare_batches or max(1, patches // args.batch_size)
            rates["bare forward"].append(bare_forward_rate(encoder, args.batch_size, n_batches))
            for kind in encoders if args.workers else ():
                for n in map(int, args.workers.split(",")):
                    store = _fresh(tmp, r, f"{kind}-w{n}")
                    chosen = classic_encoder(store) if kind == "classic" else encoder
                    label = f"{kind}, {n} workers"
                    rates.setdefault(label, []).append(
                        _steady_rate(store, chosen, args.batch_size, Cluster(workers=n))
                    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {encoder.device}; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{args.arch} @ 112 px, batch {args.batch_size}, {patches} patches, {args.rounds} rounds")
    median = {label: statistics.median(x) for label, x in rates.items() if x}
    for label, rate in median.items():
        each = ", ".join(f"{x:.1f}" for x in rates[label])
        print(f"  {label:<18} : {rate:7.1f} patches/s  (rounds: {each})")
    b = median["bare forward"]
    if "encode" in median:
        print(f"  encode / bare = {median['encode'] / b:.2f}x (target >= 0.9)")
        hours = PAPER_PATCHES / median["encode"] / 3600
        print(f"  projected for the paper's 1.65 M patches: {hours:.1f} h")
    if "classic" in median:
        c = median["classic"]
        print(f"  classic / {args.arch} bare = {c / b:.1f}x (target: classic >= 300 patches/s)")
        per_cpu = statistics.median(classic_cpu)
        print(
            f"  classic CPU cost: {per_cpu:.1f} patches per CPU-second (all threads; at most "
            f"{per_cpu * os.cpu_count():.0f} patches/s on {os.cpu_count()} idle cores)"
        )
        print(
            f"  classic, projected for the paper's 1.65 M patches: {PAPER_PATCHES / c / 3600:.1f} h"
        )
    for kind in encoders if args.workers else ():
        counts = args.workers.split(",")
        first = median[f"{kind}, {counts[0]} workers"]
        for n in counts[1:]:
            ratio = median[f"{kind}, {n} workers"] / first
            print(f"  {kind}: {n} workers / {counts[0]} = {ratio:.2f}x (target >= 1.7 for 2 / 1)")


def _steady_rate(store: Path, encoder, batch_size: int, cluster: Cluster) -> float:
    """Patches/s of a cluster encode from its first returned batch to its last."""
    seen: list[tuple[float, int]] = []
    encode(
        store,
        encoder,
        batch_size,
        progress=lambda _, done, __: seen.append((time.perf_counter(), done)),
        cluster=cluster,
    )
    (t0, n0), (t1, n1) = seen[0], seen[-1]
    return (n1 - n0) / (t1 - t0)


def _fresh(tmp: Path, round_: int, label: str) -> Path:
    """A fresh copy of the ingested store for one timed run."""
    store = tmp / f"store-{label}{round_}"
    shutil.copytree(tmp / "base", store)
    return store


if __name__ == "__main__":
    main()
