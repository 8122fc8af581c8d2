"""The ``encode`` command: patch embeddings into LanceDB."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import (
    emit,
    format_option,
    main,
    scheduler_option,
    store_option,
    wait_option,
    workers_option,
)
from clanet_store.cli.progress import progress_bars


@main.command()
@store_option
@click.option(
    "--encoder",
    "kind",
    type=click.Choice(["vit", "classic"]),
    default="vit",
    help="vit (default): the ViT of SPEC 4; classic: the training-free texture descriptor",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="local checkpoint: timm, original DINO, or clanet-store ssl-train (default: random init)",
)
@click.option("--arch", help="timm ViT name (default: from an ssl-train checkpoint, else ViT-S/8)")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="where the encoder runs (with --workers / --scheduler: on each worker; cuda asks for "
    "the worker resource GPU=1)",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the random init")
@click.option("--normalize", is_flag=True, help="ImageNet mean/std normalisation (off: reference)")
@wait_option
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="patches per table commit (at most this much work is redone after a crash)",
)
@workers_option
@scheduler_option
@format_option
def encode(
    store: Path,
    kind: str,
    weights: Path | None,
    arch: str | None,
    device: str,
    batch_size: int,
    seed: int,
    normalize: bool,
    wait: bool,
    commit_every: int,
    workers: int | None,
    scheduler: str | None,
    fmt: str,
) -> None:
    """Embed every stored patch that has no embedding for this encoder yet (1536-d for ViT-S/8,
    89-d for classic)."""
    from clanet_store.pipelines.encode_run import EncoderSpec, encode_store
    from clanet_store.pipelines.encode_workers import Cluster

    if workers and scheduler:
        raise click.UsageError("--workers starts a local cluster: not with --scheduler")
    if kind == "classic":
        given = [name for name, value in (("--weights", weights), ("--arch", arch)) if value]
        if given or normalize:
            raise click.UsageError(f"{', '.join(given or ['--normalize'])}: only for --encoder vit")
    cluster = Cluster(workers, scheduler, device) if workers or scheduler else None
    spec = EncoderSpec(kind, weights, arch, device, seed, normalize)
    with progress_bars("patch") as update:
        run = encode_store(store, spec, batch_size, wait, update, commit_every, cluster)
    r, health = run.as_dict(), run.health
    lines = [
        f"{store}: {r['patches_encoded']} patches encoded, {r['patches_skipped']} already had an "
        f"embedding of this model",
        f"model {r['model_id']} ({r['arch']}, {r['embedding_dim']}-d, weights {r['weights']}) "
        f"-> table {r['table']}",
        f"{r['seconds']:.1f} s, {r['patches_per_s']:.1f} patches/s on {r['device']}",
    ]
    if health is not None:
        lines.append(health.summary())
    if health is not None and health.collapsed:
        lines.insert(0, health.warning())
    if r["random_init"]:
        lines.insert(
            0,
            "WARNING: no --weights given: these embeddings come from a RANDOMLY INITIALISED "
            "encoder (seeded), useful for tests and demos only",
        )
    emit(fmt, r, "\n".join(lines))
