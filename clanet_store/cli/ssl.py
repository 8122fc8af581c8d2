"""The ``ssl-train`` command: DINO self-supervised training on the store's patches (SPEC 5)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from clanet_store.cli.app import emit, format_option, main, store_option
from clanet_store.cli.progress import progress
from clanet_store.textout import render_table

if TYPE_CHECKING:
    from clanet_store.pipelines.split_files import Split
    from clanet_store.pipelines.ssl_report import SSLReport
    from clanet_store.pipelines.ssl_train import CollapseProbe, TrainProgress


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
@click.option(
    "--recipe",
    type=click.Choice(["finetune", "scratch"]),
    help="finetune: SPEC 5, for an --init; scratch: DINO's from-scratch settings (default: "
    "scratch without --init, finetune with; on --resume: as saved)",
)
@click.option(
    "--centering",
    type=click.Choice(["center", "sinkhorn"]),
    help="teacher targets: center (DINO's centring, the recipes' default) or sinkhorn "
    "(DINOv2's Sinkhorn-Knopp, 3 iterations: equal use of the head's outputs over a batch)",
)
@click.option(
    "--koleo",
    type=click.FloatRange(min=0),
    help="weight of DINOv2's KoLeo regulariser on the student's class tokens (default 0: off; "
    "DINOv2: 0.1)",
)
@click.option(
    "--local-crops",
    type=click.IntRange(min=0),
    help="local crops per patch (default 8, SPEC 5; the demo uses 4: a faster step)",
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
    recipe: str | None,
    centering: str | None,
    koleo: float | None,
    local_crops: int | None,
    resume: bool,
    where: tuple[str, ...],
    k: int | None,
    split_file: Path | None,
    fmt: str,
) -> None:
    """Train a ViT with DINO on the stored patches (all batches, labels unused; with --split,
    the training side of that split only).

    After every epoch the teacher is probed for collapse; a collapsed run stops with the reason
    and exits non-zero, keeping the checkpoint of the epoch before.
    """
    from clanet_store.pipelines.split_files import load_split
    from clanet_store.pipelines.ssl_train import TrainingCollapsed, recipe_with
    from clanet_store.pipelines.ssl_train import ssl_train as run_ssl_train

    split = None if split_file is None else load_split(split_file)
    changes = {"centering": centering, "koleo_weight": koleo, "n_local": local_crops}
    dino = recipe_with(recipe, init, {key: v for key, v in changes.items() if v is not None})

    with progress("ssl-train", "step") as bar:
        try:
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
                _bar_update(bar),
                recipe=recipe,
                dino=dino,
                split=split,
            )
        except TrainingCollapsed as exc:
            r = exc.report
    emit(fmt, r.as_dict(), _summary_text(r, split))
    if r.collapsed is not None:
        raise click.ClickException(r.collapsed)
    if r.health and r.health.collapsed and fmt == "json":
        click.echo(_health_line(r.health), err=True)


def _bar_update(bar: Any) -> Callable[[TrainProgress], None]:
    """The progress callback: steps on ``bar`` (a resumed run starts mid-way), the epoch and
    loss as its postfix, and one line per epoch with the loss and the collapse probe."""

    def update(event: TrainProgress) -> None:
        if bar.total is None:  # the first step of this run
            bar.total, bar.initial = event.total_steps, event.step - 1
            bar.n = bar.initial
        bar.set_postfix(epoch=event.epoch + 1, loss=f"{event.loss:.4f}", refresh=False)
        bar.update(event.step - bar.n)
        if event.probe is not None:
            bar.write(f"{_epoch_line(event.epoch_loss, event.probe)}", file=sys.stderr)

    return update


def _epoch_line(loss: float | None, probe: CollapseProbe) -> str:
    """One epoch: mean loss and the probe's values."""
    return (
        f"epoch {probe.epoch}: mean loss {loss:.4f}, teacher entropy {probe.teacher_entropy:.3f} "
        f"per patch / {probe.batch_entropy:.3f} of the mean (ln(out_dim) "
        f"{probe.max_entropy:.3f}), median cosine distance {probe.cosine_distance_median:.4f}"
        + (" COLLAPSED" if probe.collapsed else "")
    )


def _health_line(health: CollapseProbe) -> str:
    """The final teacher's probe: a health line, loud when collapsed."""
    values = (
        f"median cosine distance {health.cosine_distance_median:.4f} between the teacher's "
        f"features, teacher entropy {health.teacher_entropy:.3f} per patch and "
        f"{health.batch_entropy:.3f} of the mean (ln(out_dim) {health.max_entropy:.3f})"
    )
    if health.collapsed:
        return f"WARNING: the encoder is COLLAPSED: {'; '.join(health.reasons)} ({values})"
    return f"health: not collapsed ({values})"


def _summary_text(r: SSLReport, split: Split | None) -> str:
    """The human summary: the run, the per-epoch table, the health line."""
    resumed = f", resumed after epoch {r.start_epoch}" if r.start_epoch else ""
    if r.epochs_run == 0:
        resumed = ", already complete: nothing to train"
    side = [f"training side of {split.kind} repeat {split.repeat}"] if split else []
    selection = ", ".join([f"rank<{r.k}", *r.where, *side])
    dino = r.dino
    lines = [
        f"{r.out}: {r.epochs} epochs of DINO on {r.arch} @ {r.img_size} px{resumed}",
        f"{r.patches} patches ({selection}), batch {r.batch_size}, "
        f"{r.steps_per_epoch} steps/epoch, init {r.init or 'random'}",
        f"recipe {r.recipe}: lr {dino.base_lr:g} x batch/256 after "
        f"{r.warmup_steps} warm-up steps, teacher temperature {dino.teacher_temp:g}"
        f" -> {dino.teacher_temp_end:g}, head of {dino.out_dim} outputs"
        f"{' (weight-normalised)' if dino.norm_last_layer else ''}, gradient clip "
        f"{dino.clip_grad or 'none'}, centering {dino.centering}, KoLeo weight "
        f"{dino.koleo_weight:g}",
        f"{r.epochs_run} epoch{'' if r.epochs_run == 1 else 's'} in {r.seconds:.1f} s, "
        f"{r.patches_per_s:.2f} patches/s on {r.device} ({r.workers} loader workers)",
        (
            f"encode --weights {r.out} gives {r.embedding_dim}-d embeddings"
            + (
                ": inductive for that split (its test side was never read)"
                if split
                else ": transductive for any split of this store (pass --split for inductive)"
            )
        )
        if Path(r.out).exists()
        else f"no checkpoint in {r.out}",
        "",
        render_table(
            [
                {"epoch": probe.epoch, "mean_loss": loss, **probe.as_dict()}
                for loss, probe in zip(r.losses, r.probes, strict=False)
            ],
            [
                "epoch",
                "mean_loss",
                "teacher_entropy",
                "batch_entropy",
                "cosine_distance_median",
                "collapsed",
            ],
        ),
    ]
    if r.health:
        lines.append(_health_line(r.health))
    return "\n".join(lines)
