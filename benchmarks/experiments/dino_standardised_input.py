"""Experiment (issue 18, negative result): does per-patch input standardisation let DINO learn
from scratch in a CPU budget?

A random-init ViT gives every brightfield patch nearly the same feature (median cosine distance
~0.001-0.002: "collapsed" before any training), because the patches' grey levels vary by a few
hundredths around 0.5 and the position embedding dominates. Standardising each patch (and each
DINO view) to mean 0 / std 1 before the ViT gives the random init spread. This script patches the
standardisation into `DinoNet.class_tokens` and `PatchEncoder.forward` (it is not in the package:
the result below is why), trains with the demo's settings (ssl_train's ``scratch`` recipe,
optionally with a fixed teacher temperature, DINOv2's Sinkhorn-Knopp centering, KoLeo and fewer
local crops) and evaluates the teacher's and its random init's embeddings
with `evaluate_levels`, as ``evaluate-encoder`` would.

    python benchmarks/experiments/dino_standardised_input.py --store STORE --out ssl.pth \
        --epochs 4 [--teacher-temp 0.04] [--centering sinkhorn] [--koleo 0.1] [--local-crops 4] \
        [--resume]

Results: docs/science.md ("DINO from scratch on a CPU").
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json

import numpy as np
import torch

from clanet_store.learn.encoder_metrics import LEVEL_KEYS, evaluate_levels
from clanet_store.models import dino, encoder
from clanet_store.pipelines.ssl_train import TrainingCollapsed, ssl_train
from clanet_store.stores.embedding_store import EmbeddingStore

_encoder_forward = encoder.PatchEncoder.forward


def standardise(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> each image to mean 0, std 1 (std at least one grey level)."""
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) / x.std((1, 2, 3), keepdim=True).clamp_min(1 / 255)


def dino_class_tokens(self: dino.DinoNet, views: list[torch.Tensor]) -> torch.Tensor:
    features = []
    for _size, group in itertools.groupby(views, key=lambda view: view.shape[-1]):
        x = standardise(torch.cat(list(group)).float() / 255).expand(-1, 3, -1, -1)
        features.append(self.backbone.forward_features(x)[:, 0])
    return torch.cat(features)


def encoder_forward(self: encoder.PatchEncoder, patches: torch.Tensor) -> torch.Tensor:
    x = patches.float() / 255 if patches.dtype == torch.uint8 else patches.float()
    return _encoder_forward(self, standardise(x[:, None])[:, 0])


def summary(store: EmbeddingStore, weights: str | None, arch: str) -> dict:
    table = store.query("patches").select("row", "rank", *LEVEL_KEYS).to_polars().sort("row")
    model = encoder.build_encoder(encoder.EncoderConfig(arch=arch), weights, 0)
    pixels = store.patch_store.read_rows(table["row"].to_numpy())
    with torch.inference_mode():
        chunks = [model(torch.from_numpy(pixels[i : i + 256])) for i in range(0, len(pixels), 256)]
    vectors = torch.cat(chunks).numpy().astype(np.float32)
    levels = evaluate_levels(vectors, table.drop("row"), top_k=10, seed=0)
    return {level: result.as_dict() for level, result in levels.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--teacher-temp", type=float, default=None)
    parser.add_argument("--arch", default="vit_tiny_patch16_224")
    parser.add_argument("--centering", choices=dino.CENTERINGS, default="center")
    parser.add_argument("--koleo", type=float, default=0.0)
    parser.add_argument("--local-crops", type=int, default=dino.SCRATCH.n_local)
    parser.add_argument(
        "--resume", action="store_true", help="continue --out (a finished run: evaluate it only)"
    )
    args = parser.parse_args()
    dino.DinoNet.class_tokens = dino_class_tokens  # the student's and the teacher's forward
    encoder.PatchEncoder.forward = encoder_forward
    recipe = dataclasses.replace(
        dino.SCRATCH,
        centering=args.centering,
        koleo_weight=args.koleo,
        n_local=args.local_crops,
    )
    if args.teacher_temp is not None:
        t = args.teacher_temp
        recipe = dataclasses.replace(recipe, teacher_temp=t, teacher_temp_end=t)
    try:
        run = ssl_train(
            args.store,
            args.out,
            epochs=args.epochs,
            batch_size=32,
            arch=args.arch,
            k=3,
            seed=0,
            workers=0,
            dino=recipe,
            resume=args.resume,
        )
        report = run.as_dict()
        print(json.dumps({"losses": report["losses"], "probes": report["probes"]}, default=str))
    except TrainingCollapsed as exc:
        print(f"collapsed: {exc}")
    store = EmbeddingStore(args.store)
    keep = (
        "cosine_distance_median",
        "effective_rank",
        "knn_accuracy_cross_batch",
        "knn_accuracy_cross_batch_chance",
        "map_cross_batch",
        "map_cross_batch_chance",
        "batch_effect_index",
    )
    for label, weights in (("trained", args.out), ("random init", None)):
        levels = summary(store, weights, args.arch)
        print(label, json.dumps({lv: {k: levels[lv][k] for k in keep} for lv in levels}))


if __name__ == "__main__":
    main()
