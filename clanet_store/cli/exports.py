"""Commands on exports: ``scan`` and ``synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clanet_store.cli.app import emit, format_option, main
from clanet_store.cli.progress import progress_bars
from clanet_store.textout import render_table


@main.command()
@click.argument("export_root", type=click.Path(path_type=Path))
@click.option(
    "--plate-map",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV with columns experiment, well, cell_line, batch",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="write the manifest (Parquet)"
)
@format_option
def scan(export_root: Path, plate_map: Path | None, out: Path | None, fmt: str) -> None:
    """Find the images of an Incucyte export, parse their names and read their headers."""
    from clanet_store.pipelines.exports import scan as run_scan

    with progress_bars("file") as update:
        r = run_scan(export_root, plate_map, out, update)
    totals, batches, rejects = r.totals, r.batch_summary, r.rejects
    lines = [
        f"{export_root}: {totals['cell_lines']} cell lines, {totals['batches']} batches, "
        f"{totals['sequences']} sequences, {totals['images']} images; "
        f"{len(rejects)} rejected, {r.ignored} ignored",
        "no image accepted"
        if totals["images"] == 0
        else f"time points {totals['t_min_h']:.2f} h to {totals['t_max_h']:.2f} h",
        "",
        render_table(
            batches,
            [
                "cell_line",
                "batch",
                "wells",
                "sequences",
                "images",
                "t_min_h",
                "t_max_h",
                "median_interval_h",
            ],
        ),
    ]
    if r.fluorescence_ignored:
        lines += ["", f"{r.fluorescence_ignored} fluorescence images ignored"]
    if r.cell_line_from_prefix:
        lines += [
            "",
            f"note: {r.cell_line_from_prefix} flat files have no plate-map entry; "
            "their cell line and batch are the file-name prefix",
        ]
    if rejects:
        lines += ["", "rejected files:", render_table(rejects, ["path", "reason"])]
    if out is not None:
        lines += ["", f"manifest written to {out}"]
    emit(fmt, r.as_dict(), "\n".join(lines))


BATCH_EFFECTS_HELP = "scale of the batch effects, 0 (none) to 1 (the paper's spread)  [default: 1]"


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--lines", type=int, default=4, show_default=True, help="cell lines")
@click.option("--batches", type=int, default=2, show_default=True, help="batches per cell line")
@click.option("--positions", type=int, default=2, show_default=True, help="positions per batch")
@click.option("--timepoints", type=int, default=4, show_default=True, help="images per position")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-effects", type=click.FloatRange(0, 1), default=1.0, help=BATCH_EFFECTS_HELP)
@click.option(
    "--size", type=(click.IntRange(min=224), click.IntRange(min=448)), default=(1040, 1408),
    help="frame height and width, e.g. --size 520 704 for fast tests  [default: 1040 1408]",
)  # fmt: skip
@format_option
def synth(out: Path, fmt: str, **options: Any) -> None:
    """Write a synthetic Incucyte-like export (deterministic for a seed)."""
    from clanet_store.pipelines.exports import synth as run_synth

    with progress_bars("image") as update:
        r = run_synth(out, progress=update, **options)
    rows = r.batches
    human = (
        f"{out}: {r.cell_lines} cell lines, {len(rows)} batches, {r.sequences} "
        f"sequences, {r.images} images (seed {r.seed})\n\n" + render_table(rows, list(rows[0]))
    )
    emit(fmt, r.as_dict(), human)
