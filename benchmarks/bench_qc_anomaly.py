"""Anomaly-score AUC per corruption kind and severity (issue 10), on real LIVECell images.

The store of ``tests/test_qc.py``, with more corrupted copies: SH-SY5Y wells B10 and C10 (location
1, crop 1, 8 time points every 12 h) in batch ``clean``, plus one copy of B10 per corruption kind,
direction and severity (``corrupt_export``). Two ``run_qc``: reference = C10 clean, new = all of
B10, once with both isolation forests (embeddings and image-quality statistics, the default) and
once with the embedding forest alone (``--embeddings-only``). The forests are fitted on the
reference alone and an image's score is the maximum over its own patches, so every copy is scored
exactly as in a run of its own against B10 clean. AUC = P(score of a corrupted image > score of a
clean one), ties half. Brightness + copies from severity 2 on lose images: the mask finds no cells
in them, so there are no patches to score (the table gives the images scored out of 8 when fewer).

Run: ``.venv/bin/python benchmarks/bench_qc_anomaly.py [--arch NAME | --weights CKPT]
[--severities 1 3 5]`` (default: the tests' seeded random-init ViT-Ti/16; a few minutes).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from shared_data import LIVECELL

from clanet_store.pipelines.corrupt import corrupt_export
from clanet_store.pipelines.encode import encode, load_encoder
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.qc import QCParams, run_qc
from clanet_store.qc.anomaly import auc
from clanet_store.qc.corrupt import DIRECTIONS, KINDS

HOURS = range(0, 96, 12)


def build_export(root: Path, severities: list[int]) -> list[str]:
    """Clean B10 + C10 and the corrupted copies of B10; returns the corrupted batch names."""
    clean, b10 = root / "export" / "SHSY5Y" / "clean", root / "b10"
    clean.mkdir(parents=True)
    b10.mkdir()
    for well in ("B10", "C10"):
        for hour in HOURS:
            name = f"SHSY5Y_Phase_{well}_1_{hour // 24:02d}d{hour % 24:02d}h00m_1.tif"
            shutil.copy(LIVECELL / name, clean)
            if well == "B10":
                shutil.copy(LIVECELL / name, b10)
    batches = []
    for kind in KINDS:
        for direction in ("down",) if kind == "defocus" else DIRECTIONS:
            name = kind if kind == "defocus" else f"{kind}_{direction}"
            for severity in severities:
                batch = f"{name}{severity}"
                corrupt_export(b10, clean.parent / batch, kind, severity, direction)
                batches.append(batch)
    return batches


def auc_table(report: dict, batches: list[str]) -> dict[str, tuple[float, int]]:
    """Per corrupted batch: (image AUC against B10 clean, images scored)."""
    images = report["anomaly"]["images"]

    def scores(batch: str) -> np.ndarray:
        return np.array([i["score"] for i in images if f"/{batch}/" in i["path"]])

    clean, out = scores("clean"), {}
    for batch in batches:
        bad = scores(batch)
        out[batch] = (auc(bad, clean) if len(bad) else float("nan"), len(bad))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", help="timm ViT (default: the checkpoint's, else ViT-Ti/16)")
    parser.add_argument("--weights", type=Path, help="encoder weights (default: random init)")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    args = parser.parse_args()
    arch = args.arch or (None if args.weights else "vit_tiny_patch16_224")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        batches = build_export(root, args.severities)
        ingest(root / "export", root / "store", workers=1)
        report = encode(root / "store", load_encoder(args.weights, arch, "cpu"))
        runs = {
            name: run_qc(
                root / "store",
                ["batch=clean,well=C10"],
                ["well=B10"],
                params=QCParams(quality=quality),
            ).as_dict()
            for name, quality in (("both forests", True), ("embeddings only", False))
        }
        seconds = time.perf_counter() - start
    print(
        f"encoder {report.arch}, {report.weights} (model {report.model_id}, "
        f"{report.embedding_dim}-d); reference C10 clean, 8 images x 10 patches; {seconds:.0f} s"
    )
    tables = {name: auc_table(qc, batches) for name, qc in runs.items()}
    severities = " / ".join(str(s) for s in args.severities)
    print("\n| corruption | " + " | ".join(f"{n}: sev. {severities}" for n in tables) + " |")
    print("|---|" + "---|" * len(tables))
    for row in dict.fromkeys(b.rstrip("0123456789") for b in batches):
        cells = []
        for table in tables.values():
            aucs = (table[f"{row}{s}"] for s in args.severities)
            text = [f"{a:.3f}" + (f" ({n}/8)" if n < 8 else "") for a, n in aucs]
            cells.append(" / ".join(text))
        print(f"| {row.replace('_', ' ')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
