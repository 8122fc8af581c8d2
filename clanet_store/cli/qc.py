"""The ``qc`` and ``corrupt`` commands: quality control of new exports (SPEC 8)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import click

from clanet_store.cli.app import (
    emit,
    format_option,
    main,
    progress,
    progress_callback,
    store_option,
    wait_option,
)
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
    with ExitStack() as stack:
        bars: dict = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = stack.enter_context(progress(stage, "step", total))
            bars[stage].update(done - bars[stage].n)

        r = run_qc(store, reference, new, window, model_id, params, heatmap, wait, update)
    emit(fmt, r, _human(r))


def _human(r: dict) -> str:
    a = r["anomaly"]
    verdict = {True: "DRIFT", False: "no drift detected", None: "CANNOT TELL"}[r["drift"]]
    lines = [
        f"model {r['model_id']}: reference {r['reference']!r} ({r['n_reference']} patches, "
        f"{r['n_reference_images']} images) vs new {r['new']!r} ({r['n_new']} patches, "
        f"{r['n_new_images']} images)",
        f"drift: MMD^2 = {r['mmd']:.4g}, p = {r['p_value']:.4g} ({r['n_permutations']} "
        f"permutations of whole {r['unit']}s; {r['n_reference_sequences']} reference, "
        f"{r['n_new_sequences']} new sequences) -> {verdict} at alpha {r['alpha']}",
        f"anomaly ({' + '.join(a['detectors'])} isolation forests): {a['n_images_flagged']} of "
        f"{r['n_new_images']} images flagged (image threshold {a['threshold_image']:.3f}), "
        f"{a['n_patches_flagged']} patches flagged",
    ]
    if r["note"]:
        yardstick = r["field_to_field_mmd"]
        lines.insert(2, f"  note: {r['note']}")
        lines.insert(
            3,
            f"  reference field-to-field MMD^2: median {yardstick['median']:.4g}, max "
            f"{yardstick['max']:.4g} over {yardstick['pairs']} pairs; new selection {r['mmd']:.4g}"
            if yardstick
            else "  reference field-to-field MMD^2: none (the reference holds one sequence)",
        )
    if r["random_init"]:
        lines.insert(
            0, "WARNING: embeddings of a RANDOMLY INITIALISED encoder: tests and demos only"
        )
    if r["flagged_images"]:
        lines += [
            "",
            "flagged images:",
            render_table(
                r["flagged_images"],
                ["path", "well", "timepoint_h", "score", *(f"{d}_score" for d in a["detectors"])],
            ),
        ]
    if r["images_without_patches"]:
        lines += [
            "",
            f"{len(r['images_without_patches'])} new images have no cell patches (the mask found "
            "no cells: blank, over-exposed or empty fields?), so they were not scored:",
            render_table(r["images_without_patches"], ["path", "well", "timepoint_h"]),
        ]
    if r["online"] is not None:
        rows = [
            {
                "batch": s["batch"],
                "well": s["well"],
                "location": s["location"],
                "crop": s["crop"],
                "images": s["n_images"],
                "first_drift_h": s["first_drift"]["end_h"] if s["first_drift"] else None,
                "p_value": s["first_drift"]["p_value"] if s["first_drift"] else None,
            }
            for s in r["online"]["sequences"]
        ]
        lines += [
            "",
            f"online drift, windows of {r['online']['window']} images:",
            render_table(
                rows, ["batch", "well", "location", "crop", "images", "first_drift_h", "p_value"]
            ),
        ]
    if r["heatmap"]:
        lines.append(f"heatmap: {r['heatmap']}")
    return "\n".join(lines)


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

    with progress_callback("corrupting", "image") as update:
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
