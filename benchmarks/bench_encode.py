"""``encode`` end to end against a bare forward pass of the same model, measured in one run.

Builds a store from real images (``--images`` of ../shared/data/azgcb_sample, 20 patches each),
then times, alternating to spread machine noise over both:

* ``bare``: `bench_forward.bare_forward_rate`, the same encoder, batch size and device over
  in-memory uint8 tensors (the baseline);
* ``encode``: `clanet_store.pipelines.encode.encode` on the store (Zarr reads in a background
  thread, LanceDB writes, the work list), a fresh copy of the store each round.

Target (issue 5): encode >= 0.9x bare. Also prints the projected time for the paper's 1.65 M
patches. Run: ``.venv/bin/python benchmarks/bench_encode.py [--images 24] [--rounds 2]``; 24
images give 480 patches, so the fixed costs (opening tables, the work list, the final compaction)
weigh about as in real use rather than dominating a 12-second run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import PAPER_PATCHES, bare_forward_rate
from shared_data import AZGCB

from clanet_store.pipelines.encode import encode, load_encoder
from clanet_store.pipelines.ingest import ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="vit_small_patch8_224")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    encoder = load_encoder(None, args.arch, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export = tmp / "export"
        for path in sorted(AZGCB.rglob("*.jpg"))[: args.images]:
            (export / path.parent.name).mkdir(parents=True, exist_ok=True)
            (export / path.parent.name / path.name).symlink_to(path)
        ingest(export, tmp / "base", workers=1)
        bare, end_to_end = [], []
        patches = 0
        for r in range(args.rounds):
            store = tmp / f"store{r}"
            shutil.copytree(tmp / "base", store)
            report = encode(store, encoder, batch_size=args.batch_size)
            patches = report.patches_encoded
            end_to_end.append(report.patches_per_s)
            n_batches = max(1, patches // args.batch_size)
            bare.append(bare_forward_rate(encoder, args.batch_size, n_batches))
    b, e = statistics.median(bare), statistics.median(end_to_end)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {encoder.device}; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{args.arch} @ 112 px, batch {args.batch_size}, {patches} patches, {args.rounds} rounds")
    for label, rate, rounds in (("bare forward", b, bare), ("encode", e, end_to_end)):
        each = ", ".join(f"{x:.1f}" for x in rounds)
        print(f"  {label:<12} : {rate:7.1f} patches/s  (rounds: {each})")
    print(f"  encode / bare = {e / b:.2f}x (target >= 0.9)")
    print(f"  projected for the paper's 1.65 M patches: {PAPER_PATCHES / e / 3600:.1f} h")


if __name__ == "__main__":
    main()
