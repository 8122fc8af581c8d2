"""Which encoder carries signal: one markdown table per store (issue 18, "Honest numbers").

Given an export (ingested here) or an existing store, embeds every patch with each encoder:

- ``vits8-random``: the seeded random-init ViT-S/8 (`encode` without weights);
- ``demo-dino``: the demo's short DINO run, made by the demo's own stages (``runs.stages``
  ssl_train and encode with the ``[ssl_train]`` / ``[encode]`` values of ``--pipeline``, default
  ``pipelines/demo.toml``); when it collapses in its first epoch it leaves no checkpoint, and the
  demo then encodes with a random init of the same arch: so does this script, and the row says so;
- ``classic``: the training-free descriptor (`encode --encoder classic`);
- each ``--weights LABEL=FILE``: a local checkpoint (e.g. a longer `ssl-train` run);

then evaluates each with `evaluate-encoder` (`pipelines.evaluate_encoder.evaluate_encoders`,
recorded in the store), and where some line has several batches (so the batch-separated split
has a test side) trains and evaluates the gated + TSS MIL model (`pipelines.mil.train` /
`evaluate`, the pipeline's ``[train.mil]`` values, batch-separated split, repeat 1, the same
split file for every encoder) on each encoder's embeddings, by model_id. No metric is computed
here; the table only prints what those functions return.

Run (one thread, the machine is shared):
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encoder_table.py --export EXPORT --work DIR``
or ``--store STORE --work DIR``; ``--json FILE`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from clanet_store.learn.training import MILConfig
from clanet_store.pipelines import mil
from clanet_store.pipelines.encode import classic_encoder, encode, load_encoder
from clanet_store.pipelines.evaluate_encoder import evaluate_encoders
from clanet_store.pipelines.ingest import ingest
from clanet_store.runs import stages
from clanet_store.runs.config import load_config
from clanet_store.runs.runner import train_splits
from clanet_store.stores.patch_store import PatchStore

DEMO_TOML = Path(__file__).resolve().parents[1] / "pipelines" / "demo.toml"
RANDOM_ARCH = "vit_small_patch8_224"
ENCODERS = ("vits8-random", "demo-dino", "classic")


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def progress(stage: str, done: int, total: int | None, /, **numbers: float) -> None:
    """The stages' progress: one log line per stage, no bar (the output is a log file)."""
    if done <= 1:
        say(f"{stage} ...")


def demo_dino(store: Path, work: Path, config: Any) -> tuple[Any, str, str | None]:
    """The demo's ssl_train and encode stages on ``store``: (encode report, label, checkpoint)."""
    run = stages.Run(
        out=work / "demo",
        store=store,
        export=None,
        progress=progress,
        say=say,
        train_splits=train_splits(config),
    )
    p = config.stages["ssl_train"]
    ssl = stages.ssl_train(run, p).summary
    run.summaries["ssl_train"] = ssl
    encoded = stages.encode(run, config.stages["encode"]).summary
    settings = (
        f"{p['arch']}, {p['epochs']} epochs, batch {p['batch_size']}, k {p['k']}, "
        f"{ssl['recipe']}, n_local {p['dino'].get('n_local', 'default')}, {p['protocol']}"
    )
    checkpoint = ssl["checkpoint"]
    if ssl["collapsed"]:
        reason = next(iter(ssl["collapsed"].values()))
        say(f"demo DINO collapsed: {reason}")
        kept = "the checkpoint before" if checkpoint else "no checkpoint: a RANDOM INIT of its arch"
        label = f"demo DINO ({settings}): COLLAPSED, encoded with {kept}"
    else:
        label = f"demo DINO ({settings})"
    return encoded, label, checkpoint


def encode_all(
    store: Path, work: Path, config: Any, names: list[str], weights: list[str]
) -> list[dict[str, Any]]:
    """Embed the store with every encoder; one dict per encoder (label, model_id, checkpoint)."""
    device = config.stages["encode"]["device"]
    batch = config.stages["encode"]["batch_size"]
    rows = []
    for name in names:
        say(f"encoder {name}")
        checkpoint = None
        if name == "vits8-random":
            report = encode(store, load_encoder(None, RANDOM_ARCH, device), batch).as_dict()
            label = f"random-init ViT-S/8 ({RANDOM_ARCH}, seed 0)"
        elif name == "demo-dino":
            report, label, checkpoint = demo_dino(store, work, config)
        elif name == "classic":
            report = encode(store, classic_encoder(store), batch).as_dict()
            label = "classic (training-free descriptor)"
        else:
            raise SystemExit(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")
        rows.append({"name": name, "label": label, "checkpoint": checkpoint, **_kept(report)})
    for item in weights:
        name, _, path = item.partition("=")
        say(f"encoder {name} ({path})")
        report = encode(store, load_encoder(path, None, device), batch).as_dict()
        rows.append({"name": name, "label": name, "checkpoint": path, **_kept(report)})
    return rows


def _kept(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("model_id", "arch", "embedding_dim", "random_init", "patches_encoded", "seconds")
    return {key: report[key] for key in keep}


def mil_scores(store: Path, work: Path, config: Any, encoders: list[dict[str, Any]]) -> None:
    """Gated + TSS on the first (split, repeat) of the pipeline's train stage, per encoder."""
    kind, repeat = train_splits(config)[0]
    for e in encoders:
        say(f"MIL gated + TSS on {e['name']} ({e['model_id']})")
        cfg = MILConfig(aggregator="gated", tss=True, seed=repeat, **config.stages["train"]["mil"])
        out = work / "demo" / "models" / f"gated-tss-{e['name']}-{kind}-r{repeat}.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        ckpt = e["checkpoint"]
        mil.train(store, out, kind, repeat, cfg, e["model_id"], ssl_checkpoint=ckpt)
        r = mil.evaluate(store, out, ssl_checkpoint=ckpt)
        e["mil"] = {
            "split": f"{kind} r{repeat}",
            "epochs": cfg.epochs,
            "k": cfg.k,
            "sequence_accuracy": r.scalar_scores["sequence_accuracy"],
            "chance": 1 / len(r.classes),
            "test_sequences": r.test_sequences,
            "encoder_training": r.seen.encoder_training,
        }


def several_batches(store: Path) -> bool:
    """Whether some line has two batches (else the batch-separated split has no test side)."""
    patches = PatchStore(store).query("patches").select("cell_line", "batch").to_polars()
    counts = patches.group_by("cell_line").agg(pl.col("batch").n_unique())
    return bool((counts["batch"] > 1).any())


def _num(value: float | None, chance: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if chance is None else f"{value:.3f} ({chance:.3f})"


def markdown(encoders: list[dict[str, Any]], with_mil: bool) -> str:
    """The table: one row per encoder, numbers as evaluate-encoder and evaluate return them."""
    head = [
        "Encoder (model_id)",
        "health, patches: median cos. dist. / eff. rank / collapsed",
        "image k-NN (chance)",
        "image mAP (chance)",
        "patch k-NN (chance)",
        "patch mAP (chance)",
        "batch-effect index image / patch",
    ]
    if with_mil:
        head.append("MIL gated + TSS, batch-sep. seq. acc. (chance)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in encoders:
        image, patch = e["evaluation"]["image"], e["evaluation"]["patch"]
        verdict = "**COLLAPSED**" if patch["collapsed"] else "no"
        cells = [
            f"{e['label']} (`{e['model_id']}`, {e['embedding_dim']}-d)",
            f"{patch['cosine_distance_median']:.4f} / {patch['effective_rank']:.1f} / {verdict}",
            _num(image["knn_accuracy_cross_batch"], image["knn_accuracy_cross_batch_chance"]),
            _num(image["map_cross_batch"], image["map_cross_batch_chance"]),
            _num(patch["knn_accuracy_cross_batch"], patch["knn_accuracy_cross_batch_chance"]),
            _num(patch["map_cross_batch"], patch["map_cross_batch_chance"]),
            f"{_num(image['batch_effect_index'])} / {_num(patch['batch_effect_index'])}",
        ]
        if with_mil:
            m = e["mil"]
            cells.append(f"{m['sequence_accuracy']:.3f} ({m['chance']:.3f}), {m['test_sequences']}")
        lines.append("| " + " | ".join(cells) + " |")
    first = encoders[0]["evaluation"]
    notes = [
        f"Groups: {first['image']['group_by']}; queries: image {first['image']['queries']}, "
        f"patch {first['patch']['queries']} (k-NN k = {first['image']['k']}, "
        f"temperature {first['image']['temperature']}); image = mean of the top "
        f"{first['top_k']} patches."
    ]
    if with_mil:
        m = encoders[0]["mil"]
        notes.append(
            f"MIL: gated attention + TSS, {m['split']}, {m['epochs']} epochs, k {m['k']}; "
            "accuracy over the test sequences (their number after the comma), chance = 1 / lines."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", type=Path, help="export to ingest into WORK/store")
    source.add_argument("--store", type=Path, help="an existing store (ingested already)")
    parser.add_argument("--work", type=Path, required=True, help="store, DINO runs, MIL models")
    parser.add_argument("--workers", type=int, default=1, choices=(1, 2), help="ingest workers")
    parser.add_argument("--pipeline", type=Path, default=DEMO_TOML, help="demo settings")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated")
    parser.add_argument("--weights", action="append", default=[], help="LABEL=FILE, repeatable")
    parser.add_argument("--set", action="append", default=[], help="stage.key=value override")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()

    start = time.perf_counter()
    config = load_config(args.pipeline, args.set)
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.store or args.work / "store"
    if args.export:
        say(f"ingest {args.export} with {args.workers} worker(s)")
        report = ingest(args.export, store, workers=args.workers)
        say(f"{report.images_added} images added, {report.patches_added} patches")
    names = [n for n in args.encoders.split(",") if n]
    encoders = encode_all(store, args.work, config, names, args.weights)
    say("evaluate-encoder")
    evaluations = evaluate_encoders(store, [e["model_id"] for e in encoders])
    for e, ev in zip(encoders, evaluations, strict=True):
        e["evaluation"] = ev.as_dict()
    with_mil = several_batches(store)
    if with_mil:
        mil_scores(store, args.work, config, encoders)
    else:
        say("no line has two batches: no batch-separated test side, no MIL column")
    load = os.getloadavg()
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} / "
        f"{load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(
        f"Store {store} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine}; "
        f"{time.perf_counter() - start:.0f} s)\n"
    )
    print(markdown(encoders, with_mil))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"store": str(store), "machine": machine, "encoders": encoders},
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
