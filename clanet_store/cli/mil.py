"""The MIL commands (SPEC 6-7): ``train``, ``evaluate``, ``predict``, ``ablation``."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, main, store_option
from clanet_store.cli.progress import progress_bars
from clanet_store.cli.render import ablation_text, evaluate_text, predict_text, train_text

# `learn.splits.SPLIT_KINDS`, `learn.aggregators.AGGREGATORS` and the `learn.training.MILConfig`
# defaults, written out so that the command line starts without importing torch
# (tests/test_mil_store.py checks they agree).
SPLIT_KINDS = ("batch-separated", "batch-stratified")
AGGREGATORS = ("gated", "mean", "max", "patch-vote")
TSS_PRIOR_KINDS = ("reference", "fitted")
DEFAULT_K = 10
DEFAULT_EPOCHS = 2000

k_option = click.option(
    "--k",
    type=click.IntRange(min=1),
    default=DEFAULT_K,
    show_default=True,
    help="patches per image (rank < k); images with fewer keep what they have",
)
epochs_option = click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=DEFAULT_EPOCHS,
    show_default=True,
    help="training epochs (the paper's 2000; a few dozen for a quick look)",
)
model_id_option = click.option(
    "--model-id", help="encoder whose embeddings to use (default: the store's latest)"
)
model_option = click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="MIL model file written by train",
)


ssl_checkpoint_option = click.option(
    "--ssl-checkpoint",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="the ssl-train checkpoint the encoder came from: says whether it saw the test side "
    "(inductive / transductive; unknown without it)",
)


@main.command()
@store_option
@click.option("--split", "split_kind", type=click.Choice(SPLIT_KINDS), required=True)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    required=True,
    help="which seeded repeat of the split (its file split-<kind>-r<R>.json next to --out is "
    "written once and reused)",
)
@click.option("--aggregator", type=click.Choice(AGGREGATORS), default="gated", show_default=True)
@click.option(
    "--tss/--no-tss", default=True, show_default=True, help="Time-series Segment Sampling"
)
@click.option(
    "--tss-prior",
    type=click.Choice(TSS_PRIOR_KINDS),
    default="reference",
    show_default=True,
    help="T_e prior: the reference's candidates 1..8 h with sigma 2.29, or fitted on the training "
    "sequences' gaps (which cannot subsample when they all share one gap)",
)
@k_option
@epochs_option
@model_id_option
@click.option("--seed", type=int, help="model init, shuffling and TSS (default: the repeat)")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="model file"
)
@ssl_checkpoint_option
@format_option
def train(
    store: Path,
    split_kind: str,
    repeat: int,
    aggregator: str,
    tss: bool,
    tss_prior: str,
    k: int,
    epochs: int,
    model_id: str | None,
    seed: int | None,
    out: Path,
    ssl_checkpoint: Path | None,
    fmt: str,
) -> None:
    """Train a MIL classifier on the training side of a split of the stored sequences."""
    from clanet_store.pipelines.mil import MILConfig
    from clanet_store.pipelines.mil import train as run_train

    config = MILConfig(
        aggregator=aggregator,
        tss=tss,
        tss_prior=tss_prior,
        k=k,
        epochs=epochs,
        seed=repeat if seed is None else seed,
    )
    with progress_bars("epoch") as update:
        r = run_train(store, out, split_kind, repeat, config, model_id, update, ssl_checkpoint)
    for warning in r.warnings:
        click.echo(f"warning: {warning}", err=True)
    emit(fmt, r.as_dict(), train_text(r))


@main.command()
@store_option
@model_option
@ssl_checkpoint_option
@format_option
def evaluate(store: Path, model_path: Path, ssl_checkpoint: Path | None, fmt: str) -> None:
    """Score a model on the test side of its split: accuracy and macro F1, sequence and batch."""
    from clanet_store.pipelines.mil import evaluate as run_evaluate

    r = run_evaluate(store, model_path, ssl_checkpoint)
    emit(fmt, r.as_dict(), evaluate_text(r))


@main.command()
@store_option
@model_option
@click.option(
    "--export",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="new export: ingested and encoded into the store first, then its sequences predicted",
)
@click.option(
    "--where",
    multiple=True,
    help="stored sequences to predict: COLUMN OP VALUE on the embeddings table (OP = != < <= > "
    ">=), repeat or comma-separate to AND, e.g. --where batch=VID1702",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="with --export: the encoder weights the model's embeddings came from (none: random init)",
)
@click.option("--seed", type=int, default=0, show_default=True, help="with --export: random init")
@click.option("--plate-map", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), help="ingest worker processes")
@click.option(
    "--min-probability",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="warn when the top probability is below this",
)
@click.option(
    "--include-training",
    is_flag=True,
    help="count sequences the model was trained on (marked in_training) in the summary and in "
    "their batches' means",
)
@format_option
def predict(
    store: Path,
    model_path: Path,
    export: Path | None,
    where: tuple[str, ...],
    weights: Path | None,
    seed: int,
    plate_map: Path | None,
    workers: int | None,
    min_probability: float,
    include_training: bool,
    fmt: str,
) -> None:
    """Authenticate sequences: predicted cell line, probability and runner-up, per sequence and
    per batch; a warning when the top probability is low."""
    from clanet_store.pipelines.mil import predict as run_predict

    if (export is None) == (not where):
        raise click.UsageError("give exactly one of --export and --where")
    with progress_bars("item") as update:
        r = run_predict(
            store,
            model_path,
            where,
            export,
            plate_map,
            weights,
            seed,
            workers,
            min_probability,
            update,
            include_training,
        )
    emit(fmt, r.as_dict(), predict_text(r))


@main.command()
@store_option
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@k_option
@epochs_option
@model_id_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Markdown table (split files are written and reused next to it)",
)
@ssl_checkpoint_option
@click.option(
    "--transductive",
    is_flag=True,
    help="score every split on the one given encoder (default: inductive, each split on an "
    "encoder refitted on its training side: a classic encoder's statistics, or DINO with "
    "--ssl-config)",
)
@click.option(
    "--ssl-config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="pipeline TOML whose [ssl_train] table trains DINO on each split's training side "
    "(as run does; slow on CPU), checkpoints kept in ssl/ next to --out and reused",
)
@format_option
def ablation(
    store: Path,
    repeats: int,
    k: int,
    epochs: int,
    model_id: str | None,
    out: Path,
    ssl_checkpoint: Path | None,
    transductive: bool,
    ssl_config: Path | None,
    fmt: str,
) -> None:
    """Gated attention with and without TSS, mean and max pooling and patch vote, on both
    splits with seeded repeats: the paper's Table 4 as Markdown. Inductive by default: each
    split is scored on an encoder whose fitted parts saw only its training side."""
    from clanet_store.pipelines.mil import ablation as run_ablation

    if transductive and ssl_config is not None:
        raise click.UsageError("--ssl-config trains one encoder per split: not with --transductive")
    ssl = None
    if ssl_config is not None:
        from clanet_store.runs.config import load_config

        ssl = load_config(ssl_config).stages["ssl_train"]
        if not ssl["enabled"]:
            raise click.UsageError(f"{ssl_config}: [ssl_train] enabled = false, nothing to train")
    with progress_bars("step") as update:
        r = run_ablation(
            store,
            out,
            repeats,
            epochs,
            k,
            model_id,
            update,
            ssl_checkpoint,
            transductive=transductive,
            ssl=ssl,
            say=lambda line: click.echo(line, err=True),
        )
    emit(fmt, r.as_dict(), ablation_text(r))
