"""The MIL commands (SPEC 6-7): ``train``, ``evaluate``, ``predict``, ``ablation``."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from clanet_store.cli.app import emit, format_option, main, progress, store_option
from clanet_store.learn.splits import SPLIT_KINDS
from clanet_store.textout import render_table

# `learn.aggregators.AGGREGATORS` and the `learn.training.MILConfig` defaults, written out so that
# the command line starts without importing torch (tests/test_mil_store.py checks they agree).
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


def _encoder_line(r: dict) -> str:
    random = (
        " -- RANDOMLY INITIALISED encoder: demo numbers only" if r["encoder_random_init"] else ""
    )
    return (
        f"encoder {r['encoder_model_id']} ({r['encoder_arch']}, {r['embedding_dim']}-d, "
        f"weights {r['encoder_weights']}){random}"
    )


def _training_line(r: dict) -> str:
    return f"encoder {r['encoder_training'].upper()} for this split: {r['encoder_training_why']}"


def _scores_line(r: dict) -> str:
    from clanet_store.learn.metrics import SCALAR_SCORES

    return ", ".join(f"{key} {100 * r[key]:.1f} %" for key in SCALAR_SCORES)


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
    from clanet_store.learn.training import MILConfig
    from clanet_store.pipelines.mil import train as run_train

    config = MILConfig(
        aggregator=aggregator,
        tss=tss,
        tss_prior=tss_prior,
        k=k,
        epochs=epochs,
        seed=repeat if seed is None else seed,
    )
    with progress("training", "epoch", total=epochs) as bar:

        def update(stats: dict[str, float]) -> None:
            bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['accuracy']:.3f}")
            bar.update(1)

        r = run_train(store, out, split_kind, repeat, config, model_id, update, ssl_checkpoint)
    last = r["epochs"][-1]
    lines = [
        f"{r['model']}: {aggregator}{' + TSS' if tss else ''}, {epochs} epochs on "
        f"{r['train_sequences']} sequences of {len(r['classes'])} cell lines "
        f"({r['test_sequences']} held out for evaluate)",
        f"split {split_kind} repeat {repeat}: {r['split_file']} "
        f"({'reused' if r['split_reused'] else 'written'})",
        _encoder_line(r),
        _training_line(r),
        f"last epoch: loss {last['loss']:.4f}, training accuracy {100 * last['accuracy']:.1f} %; "
        f"bags loaded in {r['load_seconds']:.1f} s, trained in {r['train_seconds']:.1f} s",
    ]
    if r["sequences_outside_split"]:
        lines.append(f"{r['sequences_outside_split']} stored sequences are not in the split file")
    if r["tss_subsampled_share"] is not None:
        lines.append(
            f"TSS ({tss_prior} prior, candidates {r['tss_candidates']} h, sigma "
            f"{r['tss_sigma']:.2f}): {100 * r['tss_subsampled_share']:.1f} % of bag-epochs "
            "subsampled"
        )
    for warning in r["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    emit(fmt, r, "\n".join(lines))


@main.command()
@store_option
@model_option
@ssl_checkpoint_option
@format_option
def evaluate(store: Path, model_path: Path, ssl_checkpoint: Path | None, fmt: str) -> None:
    """Score a model on the test side of its split: accuracy and macro F1, sequence and batch."""
    from clanet_store.pipelines.mil import evaluate as run_evaluate

    r = run_evaluate(store, model_path, ssl_checkpoint)
    classes = r["classes"]
    confusion = [
        {"true": name, **dict(zip(classes, row, strict=True))}
        for name, row in zip(classes, r["confusion"], strict=True)
    ]
    lines = [
        f"{r['model']} ({r['aggregator']}{' + TSS' if r['tss'] else ''}) on the test side of "
        f"{r['split']} repeat {r['repeat']}: {r['test_sequences']} sequences, "
        f"{r['test_batches']} batches",
        _encoder_line(r),
        _training_line(r),
        _scores_line(r),
        "",
        "sequence confusion (rows true, columns predicted):",
        render_table(confusion, ["true", *classes]),
        "",
        "accuracy against the fraction of each sequence used (paper Fig. 8):",
        render_table(r["accuracy_by_fraction"], ["fraction", "natural", "reversed"]),
    ]
    emit(fmt, r, "\n".join(lines))


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
    with ExitStack() as stack:
        update = _stage_bars(stack, "item")
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
    columns = ["labelled", "predicted", "probability", "runner_up", "runner_up_probability"]
    lines = [
        f"{r['model']}: {len(r['sequences'])} sequences in {len(r['batches'])} batches; "
        f"{r['mismatches']} predictions differ from the label, {r['warnings']} low-confidence"
        + (
            ""
            if not r["in_training"]
            else f" ({r['in_training']} sequences the model was trained on are marked TRAINED"
            + (" and counted)" if r["include_training"] else " and not counted)")
        ),
        _encoder_line(r),
        "",
        render_table(_flagged(r["sequences"]), ["batch", "position", "images", *columns, "flag"]),
        "",
        render_table(_flagged(r["batches"]), ["batch", "sequences", *columns, "flag"]),
    ]
    emit(fmt, r, "\n".join(lines))


def _stage_bars(stack: ExitStack, unit: str) -> Callable[[str, int, int], None]:
    """``update(stage, done, total)``: one progress bar per stage, opened on ``stack``."""
    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = stack.enter_context(progress(stage, unit, total))
        bar = bars[stage]
        bar.total = total
        bar.update(done - bar.n)

    return update


def _flagged(items: list[dict]) -> list[dict]:
    """Rows with a ``flag``: MISMATCH when the prediction is not the label, and the warning."""
    return [
        {
            **item,
            "flag": "; ".join(
                filter(
                    None,
                    [
                        "TRAINED" if item["in_training"] else None,
                        None if item["matches_label"] else "MISMATCH",
                        item["warning"],
                    ],
                )
            ),
        }
        for item in items
    ]


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
    from clanet_store.pipelines.mil import ABLATION_VARIANTS
    from clanet_store.pipelines.mil import ablation as run_ablation

    if transductive and ssl_config is not None:
        raise click.UsageError("--ssl-config trains one encoder per split: not with --transductive")
    ssl = None
    if ssl_config is not None:
        from clanet_store.runs.config import load_config

        ssl = load_config(ssl_config).stages["ssl_train"]
        if not ssl["enabled"]:
            raise click.UsageError(f"{ssl_config}: [ssl_train] enabled = false, nothing to train")
    total = len(ABLATION_VARIANTS) * len(SPLIT_KINDS) * repeats * epochs
    with ExitStack() as stack:
        stages = _stage_bars(stack, "step")
        bar = stack.enter_context(progress("ablation", "epoch", total=total))

        def update(run: str, stats: dict[str, float]) -> None:
            bar.set_description(run, refresh=False)
            bar.update(1)

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
            stage_progress=stages,
            say=lambda line: click.echo(line, err=True),
        )
    emit(fmt, r, f"{r['out']}:\n\n{r['markdown']}")
