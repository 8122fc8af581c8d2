"""Commands on exports: ``scan`` and ``synth``."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, main, progress
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
    from clanet_store.exports.scan import scan_export
    from clanet_store.exports.summary import batch_summary, export_summary
    from clanet_store.stores.manifest import write_manifest

    with progress("scanning", "file") as bar:
        result = scan_export(export_root, plate_map, on_file=bar.update)
    if out is not None:
        write_manifest(result.manifest, out)
    totals = export_summary(result.manifest)
    batches = batch_summary(result.manifest).to_dicts()
    rejects = result.rejects.to_dicts()
    payload = {
        "root": str(export_root),
        **totals,
        "rejected": len(rejects),
        "ignored": result.ignored,
        "cell_line_from_prefix": result.cell_line_from_prefix,
        "fluorescence_ignored": result.fluorescence_ignored,
        "manifest": None if out is None else str(out),
        "batch_summary": batches,
        "rejects": rejects,
    }
    lines = [
        f"{export_root}: {totals['cell_lines']} cell lines, {totals['batches']} batches, "
        f"{totals['sequences']} sequences, {totals['images']} images; "
        f"{len(rejects)} rejected, {result.ignored} ignored",
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
    if result.fluorescence_ignored:
        lines += ["", f"{result.fluorescence_ignored} fluorescence images ignored"]
    if result.cell_line_from_prefix:
        lines += [
            "",
            f"note: {result.cell_line_from_prefix} flat files have no plate-map entry; "
            "their cell line and batch are the file-name prefix",
        ]
    if rejects:
        lines += ["", "rejected files:", render_table(rejects, ["path", "reason"])]
    if out is not None:
        lines += ["", f"manifest written to {out}"]
    emit(fmt, payload, "\n".join(lines))


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
def synth(
    out: Path,
    lines: int,
    batches: int,
    positions: int,
    timepoints: int,
    seed: int,
    batch_effects: float,
    size: tuple[int, int],
    fmt: str,
) -> None:
    """Write a synthetic Incucyte-like export (deterministic for a seed)."""
    from clanet_store.exports.synth import synth_export

    total = lines * batches * positions * timepoints
    with progress("rendering", "image", total=max(total, 0)) as bar:
        try:
            result = synth_export(
                out,
                lines,
                batches,
                positions,
                timepoints,
                seed,
                on_image=lambda _: bar.update(),
                batch_effects=batch_effects,
                size=size,
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    rows = [
        {
            "cell_line": line,
            "batch": b.name,
            "prefix": b.prefix,
            "interval_h": b.interval_h,
            "seeding_per_mm2": round(b.seeding_per_mm2),
            "start_h": round(b.start_min / 60, 2),
        }
        for line, styles in result.batches.items()
        for b in styles
    ]
    payload = {
        "root": str(result.root),
        "cell_lines": len(result.lines),
        "sequences": result.n_sequences,
        "images": result.n_images,
        "seed": seed,
        "batches": rows,
    }
    human = (
        f"{out}: {len(result.lines)} cell lines, {len(rows)} batches, {result.n_sequences} "
        f"sequences, {result.n_images} images (seed {seed})\n\n" + render_table(rows, list(rows[0]))
    )
    emit(fmt, payload, human)
