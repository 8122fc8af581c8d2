"""Bare forward throughput of the patch encoder over in-memory uint8 patches.

`bare_forward_rate` is the baseline that ``bench_encode.py`` sets `clanet-store encode` against
(same model, batch size and device, measured in the same run). Run alone, it times ViT-S/8 at
112 px (a random init: the speed does not depend on the weights) at batch sizes 32 and 64 and
projects the time for the paper's 1.65 M patches.

Run: ``.venv/bin/python benchmarks/bench_forward.py [--device auto|cpu|cuda] [--batches N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from clanet_store.models.device import inference_context, select_device
from clanet_store.models.encoder import EncoderConfig, PatchEncoder, build_encoder

PAPER_PATCHES = 1_650_000


def bare_forward_rate(encoder: PatchEncoder, batch_size: int, n_batches: int) -> float:
    """Patches per second of ``encoder`` on random uint8 patches already on its device.

    The batches are made before the clock starts; one untimed warm-up batch runs first; every
    batch runs under `inference_context` (bf16 autocast on CUDA), and CUDA is synchronised
    before the clock stops.
    """
    side = encoder.config.img_size
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 256, (batch_size, side, side), dtype=torch.uint8, generator=generator)
        for _ in range(n_batches)
    ]
    batches = [batch.to(encoder.device) for batch in batches]
    with inference_context(encoder.device):
        encoder(batches[0])
        _synchronize(encoder.device)
        start = time.perf_counter()
        for batch in batches:
            encoder(batch)
        _synchronize(encoder.device)
        elapsed = time.perf_counter() - start
    return batch_size * n_batches / elapsed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batches", type=int, default=2, help="timed batches per batch size")
    args = parser.parse_args()
    device = select_device(args.device)
    encoder = build_encoder(EncoderConfig()).to(device)
    print(
        f"{encoder.config.arch} @ {encoder.config.img_size} px, D={encoder.embedding_dim}, "
        f"{encoder.weights_source}; device {device}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (load {os.getloadavg()[0]:.1f}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    for batch_size in (32, 64):
        rate = bare_forward_rate(encoder, batch_size, args.batches)
        hours = PAPER_PATCHES / rate / 3600
        print(
            f"batch {batch_size:3d}: {rate:8.1f} patches/s -> "
            f"{PAPER_PATCHES / 1e6:.2f} M patches in {hours:.1f} h"
        )


if __name__ == "__main__":
    main()
