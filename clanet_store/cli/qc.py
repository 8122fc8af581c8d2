"""The ``qc`` and ``corrupt`` commands: quality control of new exports (SPEC 8)."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import (
    emit,
    format_option,
    main,
    store_option,
    wait_option,
)
from clanet_store.cli.progress import progress_bars
from clanet_store.cli.render import qc_text
from clanet_store.textout import render_table


@main.command()
@store_option
@click.option(
    "--reference",
    "reference",
    multiple=True,
    required=True,
    help="filters of the reference set, e.g. cell_line=A549,batch=b1 (AND)",
)
@click.option(
    "--new",
    "new",
    multiple=True,
    required=True,
    help="filters of the new set, e.g. cell_line=A549,batch=b4 (AND)",
)
@click.option(
    "--window",
    type=click.IntRange(min=2),
    help="online drift: sliding windows of this many images per new sequence (SPEC: 10)",
)
@click.option("--model", "model_id", help="model_id of the embeddings (default: the latest)")
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="top-k patches per image (rank < k)",
)
@click.option(
    "--permute-by",
    type=click.Choice(["auto", "image", "sequence"]),
    default="auto",
    show_default=True,
    help="unit the permutation test exchanges; auto: sequences when each side has at least 5, "
    "else images, reported as unable to tell drift from field-to-field variation",
)
@click.option("--permutations", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="drift is reported when p < alpha",
)
@click.option(
    "--contamination",
    type=click.FloatRange(0, 0.5, min_open=True),
    default=0.01,
    show_default=True,
    help="expected anomaly fraction of the reference",
)
@click.option(
    "--quality/--embeddings-only",
    default=True,
    show_default=True,
    help="also score image-quality statistics of the patches (brightness, contrast, sharpness) "
    "with a second isolation forest; the anomaly score is the larger of the two",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True
)
@click.option(
    "--heatmap",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a plate-layout PNG of the max image anomaly score per well",
)
@wait_option
@format_option
def qc(
    store: Path,
    reference: tuple[str, ...],
    new: tuple[str, ...],
    window: int | None,
    model_id: str | None,
    k: int,
    permute_by: str,
    permutations: int,
    alpha: float,
    contamination: float,
    quality: bool,
    seed: int,
    device: str,
    heatmap: Path | None,
    wait: bool,
    fmt: str,
) -> None:
    """Drift (MMD, permutation p-value) and anomaly scores of --new against --reference."""
    from clanet_store.pipelines.qc import QCParams, run_qc

    params = QCParams(
        k=k,
        permute_by=permute_by,
        n_permutations=permutations,
        alpha=alpha,
        contamination=contamination,
        quality=quality,
        seed=seed,
        device=device,
    )
    with progress_bars("step") as update:
        report = run_qc(store, reference, new, window, model_id, params, heatmap, wait, update)
    emit(fmt, report.as_dict(), qc_text(report))


@main.command()
@click.argument("export_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["defocus", "contrast", "brightness"]), required=True)
@click.option("--severity", type=click.IntRange(1, 5), required=True, help="1 (mild) .. 5 (strong)")
@click.option(
    "--direction",
    type=click.Choice(["down", "up"]),
    default="down",
    show_default=True,
    help="contrast / brightness: lower or raise (ignored for defocus)",
)
@format_option
def corrupt(
    export_root: Path, out: Path, kind: str, severity: int, direction: str, fmt: str
) -> None:
    """Write a corrupted copy of an export (same names and layout) for robustness checks."""
    from clanet_store.pipelines.corrupt import corrupt_export

    with progress_bars("image") as update:
        report = corrupt_export(export_root, out, kind, severity, direction, update)
    lines = [
        f"{out}: {report.images_written} images written, {kind} severity {severity} "
        f"(parameter {report.parameter:g})"
    ]
    if report.skipped:
        lines += [
            "files the scan rejected (not copied):",
            render_table(report.skipped, ["path", "reason"]),
        ]
    emit(fmt, report.as_dict(), "\n".join(lines))
