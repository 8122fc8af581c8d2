"""Commands that write, describe or repair a store: ``ingest``, ``info`` and ``repair``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clanet_store.cli.app import (
    emit,
    format_option,
    human_size,
    interruptible,
    main,
    scheduler_option,
    store_option,
    wait_option,
    workers_option,
)
from clanet_store.cli.progress import progress_bars
from clanet_store.textout import render_table

if TYPE_CHECKING:
    from clanet_store.pipelines.evaluate_encoder import EncoderSummary


@main.command()
@click.argument("export_root", type=click.Path(path_type=Path))
@store_option
@click.option("--plate-map", type=click.Path(dir_okay=False, path_type=Path))
@workers_option
@scheduler_option
@wait_option
@click.option("--strict", is_flag=True, help="exit non-zero if any image is rejected")
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="images per table commit (fewer = less rework after a crash, more table versions)",
)
@click.option(
    "--dashboard", is_flag=True, help="serve Dask's dashboard (127.0.0.1:8787 or a free port)"
)
@format_option
def ingest(
    export_root: Path,
    store: Path,
    plate_map: Path | None,
    workers: int | None,
    scheduler: str | None,
    wait: bool,
    strict: bool,
    commit_every: int,
    dashboard: bool,
    fmt: str,
) -> None:
    """Scan an export, extract mask + CCS patches on Dask, write them into the store."""
    from clanet_store.pipelines.ingest import ingest as run_ingest

    with interruptible(), progress_bars("image") as update:
        report = run_ingest(
            export_root,
            store,
            plate_map,
            workers,
            scheduler,
            wait,
            update,
            commit_every,
            dashboard=dashboard,
        )
    r = report.as_dict()
    lines = [
        f"{store}: {r['images_added']} images added, {r['images_replaced']} replaced, "
        f"{r['images_skipped']} skipped (already stored), {r['images_rejected']} rejected; "
        f"{r['patches_added']} patches added",
        f"{r['seconds']:.1f} s, {r['images_per_s']:.2f} images/s on {r['workers']} workers",
    ]
    if r["fluorescence_ignored"]:
        lines.append(f"{r['fluorescence_ignored']} fluorescence images ignored")
    if r["recovered_rows"]:
        lines.append(
            f"recovered from an interrupted run: {r['recovered_rows']} orphan rows removed"
        )
    if not (r["images_added"] or r["images_replaced"] or r["images_rejected"]):
        lines.append("nothing new to ingest")
    if r["rejects"]:
        lines += ["", "rejected files:", render_table(r["rejects"], ["path", "reason"])]
    emit(fmt, r, "\n".join(lines))
    processed = r["images_added"] + r["images_replaced"]
    if strict and r["images_rejected"]:
        raise click.ClickException(f"{r['images_rejected']} image(s) rejected (--strict)")
    if r["images_rejected"] and not processed and not r["images_skipped"]:
        raise click.ClickException("no image could be ingested")


@main.command()
@store_option
@format_option
def info(store: Path, fmt: str) -> None:
    """Counts per cell line and batch, time range, size on disk, table versions, rejects."""
    from clanet_store.pipelines.store_info import info as store_info

    r = store_info(store)
    versions = ", ".join(f"{k} v{v}" for k, v in r.table_versions.items())
    lines = [
        f"{r.store}: {r.cell_lines} cell lines, {r.batches} batches, "
        f"{r.sequences} sequences, {r.images} images, {r.patches} patches, "
        f"{r.rejected} rejected",
        f"size on disk {human_size(r.size_bytes)}; table versions: {versions}",
    ]
    if r.images:
        lines.append(f"time points {r.t_min_h:.2f} h to {r.t_max_h:.2f} h")
        cols = [
            "cell_line",
            "batch",
            "sequences",
            "images",
            "patches",
            "t_min_h",
            "t_max_h",
            "mean_confluency",
        ]
        lines += ["", render_table(r.per_batch, cols)]
    if r.encoders:
        lines += ["", "encoders:", encoders_table(r.encoders)]
    if r.rejects:
        lines += ["", "rejected files:", render_table(r.rejects, ["path", "reason"])]
    emit(fmt, r.as_dict(), "\n".join(lines))


def encoders_table(encoders: Sequence[EncoderSummary]) -> str:
    """One line per encoder: weights, patch-level health, latest image-level evaluation."""
    rows = []
    for e in encoders:
        h, image = e.health, e.image or {}
        rows.append(
            {
                "model_id": e.encoder.model_id,
                "arch": e.encoder.arch,
                "weights": e.encoder.weights,
                "cos_dist_median": h.cosine_distance_median if h else None,
                "eff_rank": h.effective_rank if h else None,
                "health": "COLLAPSED" if h and h.collapsed else ("ok" if h else "-"),
                "image_knn": image.get("knn_accuracy_cross_batch"),
                "knn_chance": image.get("knn_accuracy_cross_batch_chance"),
                "image_map": image.get("map_cross_batch"),
                "map_chance": image.get("map_cross_batch_chance"),
                "batch_effect": image.get("batch_effect_index"),
                "evaluated_at": e.evaluated_at.isoformat()[:19] if e.evaluated_at else "never",
            }
        )
    return render_table(rows, list(rows[0]))


@main.command()
@store_option
@format_option
def repair(store: Path, fmt: str) -> None:
    """Rebuild a lost or corrupt store.json from the patch array and the tables (after checking
    that they agree; refused when they do not)."""
    from clanet_store.pipelines.repair import repair_store

    r = repair_store(store)
    tables = ", ".join(f"{k} v{v}" for k, v in r.tables.items())
    lines = [
        f"{r.store}: store.json rebuilt: {r.images} images, {r.patches} patches; tables {tables}",
        "export roots: " + (", ".join(r.exports) or "unknown (pass them where asked)"),
    ]
    if r.replaced:
        lines.append(f"the corrupt store.json was kept as {r.replaced}")
    emit(fmt, r.as_dict(), "\n".join(lines))
