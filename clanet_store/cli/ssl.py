"""The ``ssl-train`` command: DINO self-supervised training on the store's patches (SPEC 5)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, main, progress, store_option
from clanet_store.textout import render_table


@main.command("ssl-train")
@store_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="checkpoint file, rewritten after every epoch; its teacher is what encode --weights uses",
)
@click.option("--epochs", type=click.IntRange(min=1), help="default 200 (on --resume: as saved)")
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="default 256 (on --resume: as saved)"
)
@click.option(
    "--arch",
    help="timm ViT, built at 112 px (default vit_small_patch8_224; vit_tiny_patch16_224 trains "
    "in minutes on a CPU)",
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="start from a local timm / DINO / ssl-train weights file (default: random init)",
)
@click.option("--resume", is_flag=True, help="continue the run saved in --out, same schedules")
@click.option(
    "--where",
    multiple=True,
    help="filter on the patches table, COLUMN OP VALUE with OP one of = != < <= > >=; repeat "
    "(or separate with commas) to combine with AND, e.g. --where 'cell_line=A549,batch!=b2'",
)
@click.option("--k", type=click.IntRange(min=1), help="patches per image, rank < k (default 10)")
@click.option(
    "--split",
    "split_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="split file (split-<kind>-r<R>.json of train / ablation): train on the patches of its "
    "training sequences only, so the encoder never sees the test side (inductive)",
)
@format_option
def ssl_train(
    store: Path,
    out: Path,
    epochs: int | None,
    batch_size: int | None,
    arch: str | None,
    init: Path | None,
    resume: bool,
    where: tuple[str, ...],
    k: int | None,
    split_file: Path | None,
    fmt: str,
) -> None:
    """Train a ViT with DINO on the stored patches (all batches, labels unused; with --split,
    the training side of that split only)."""
    from clanet_store.errors import ClanetError
    from clanet_store.learn.splits import read_split
    from clanet_store.pipelines.ssl_train import TrainProgress
    from clanet_store.pipelines.ssl_train import ssl_train as run_ssl_train

    try:
        split = None if split_file is None else read_split(split_file)
    except ValueError as error:
        raise ClanetError(str(error)) from None

    with progress("ssl-train", "step") as bar:

        def update(event: TrainProgress) -> None:
            if bar.total is None:  # the first step of this run: a resumed run starts mid-way
                bar.total, bar.initial = event.total_steps, event.step - 1
                bar.n = bar.initial
            bar.set_postfix(epoch=event.epoch + 1, loss=f"{event.loss:.4f}", refresh=False)
            bar.update(event.step - bar.n)
            if event.epoch_loss is not None:
                bar.write(
                    f"epoch {event.epoch + 1}: mean loss {event.epoch_loss:.4f}", file=sys.stderr
                )

        r = run_ssl_train(
            store,
            out,
            epochs,
            batch_size,
            arch,
            init,
            resume,
            where or None,
            k,
            update,
            split=split,
        )
    resumed = f", resumed after epoch {r['start_epoch']}" if r["start_epoch"] else ""
    if r["epochs_run"] == 0:
        resumed = ", already complete: nothing to train"
    side = [f"training side of {split.kind} repeat {split.repeat}"] if split else []
    selection = ", ".join([f"rank<{r['k']}", *r["where"], *side])
    lines = [
        f"{r['out']}: {r['epochs']} epochs of DINO on {r['arch']} @ {r['img_size']} px{resumed}",
        f"{r['patches']} patches ({selection}), batch {r['batch_size']}, "
        f"{r['steps_per_epoch']} steps/epoch, init {r['init'] or 'random'}",
        f"{r['epochs_run']} epochs in {r['seconds']:.1f} s, {r['patches_per_s']:.2f} patches/s on "
        f"{r['device']} ({r['workers']} loader workers)",
        f"encode --weights {r['out']} gives {r['embedding_dim']}-d embeddings"
        + (
            ": inductive for that split (its test side was never read)"
            if split
            else ": transductive for any split of this store (pass --split for inductive)"
        ),
        "",
        render_table(
            [{"epoch": i + 1, "mean_loss": loss} for i, loss in enumerate(r["losses"])],
            ["epoch", "mean_loss"],
        ),
    ]
    emit(fmt, r, "\n".join(lines))
