"""The ``clanet-store`` command line: parse arguments, call one library function, print.

Every reporting command takes ``--format table|json``; failures exit non-zero with one line.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from clanet_store import __version__
from clanet_store.errors import ClanetError
from clanet_store.textout import render_table, to_json


class _Group(click.Group):
    """Turn ``ClanetError`` into click's one-line ``Error: ...`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClanetError as exc:
            raise click.ClickException(str(exc)) from None


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="human-readable table or machine-readable JSON",
)


@contextmanager
def progress(desc: str, unit: str, total: int | None = None):
    """A progress bar on stderr (silent when stderr is not a terminal)."""
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False) as bar:
        yield bar


def emit(fmt: str, payload: dict, human: str) -> None:
    """Print the JSON payload or the human text."""
    click.echo(to_json(payload) if fmt == "json" else human)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="clanet-store")
def main() -> None:
    """clanet-store: a feature store for cross-batch cell line authentication (CLANet)."""


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


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--lines", type=int, default=4, show_default=True, help="cell lines")
@click.option("--batches", type=int, default=2, show_default=True, help="batches per cell line")
@click.option("--positions", type=int, default=2, show_default=True, help="positions per batch")
@click.option("--timepoints", type=int, default=4, show_default=True, help="images per position")
@click.option("--seed", type=int, default=0, show_default=True)
@format_option
def synth(
    out: Path, lines: int, batches: int, positions: int, timepoints: int, seed: int, fmt: str
) -> None:
    """Write a synthetic Incucyte-like export (deterministic for a seed)."""
    from clanet_store.exports.synth import synth_export

    total = lines * batches * positions * timepoints
    with progress("rendering", "image", total=max(total, 0)) as bar:
        try:
            result = synth_export(
                out, lines, batches, positions, timepoints, seed, on_image=lambda _: bar.update()
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    rows = [
        {"cell_line": line, "batch": b.name, "prefix": b.prefix, "interval_h": b.interval_h,
         "seeding_per_mm2": round(b.seeding_per_mm2), "start_h": round(b.start_min / 60, 2)}
        for line, styles in result.batches.items()
        for b in styles
    ]  # fmt: skip
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
        f"sequences, {result.n_images} images (seed {seed})\n\n"
        + render_table(rows, list(rows[0]))
    )
    emit(fmt, payload, human)


store_option = click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CLANET_STORE",
    required=True,
    help="store directory (default: $CLANET_STORE)",
)


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@main.command()
@click.argument("export_root", type=click.Path(path_type=Path))
@store_option
@click.option("--plate-map", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), help="local worker processes (default: cores)")
@click.option("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
@click.option("--wait", is_flag=True, help="wait for another writer instead of failing")
@click.option("--strict", is_flag=True, help="exit non-zero if any image is rejected")
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="images per table commit (fewer = less rework after a crash, more table versions)",
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
    fmt: str,
) -> None:
    """Scan an export, extract mask + CCS patches on Dask, write them into the store."""
    from clanet_store.pipelines.ingest import ingest as run_ingest

    with progress("ingesting", "image") as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = run_ingest(
            export_root, store, plate_map, workers, scheduler, wait, update, commit_every
        )
    r = report.as_dict()
    lines = [
        f"{store}: {r['images_added']} images added, {r['images_replaced']} replaced, "
        f"{r['images_skipped']} skipped (already stored), {r['images_rejected']} rejected; "
        f"{r['patches_added']} patches added",
        f"{r['seconds']:.1f} s, {r['images_per_s']:.2f} images/s on {r['workers']} workers",
    ]
    if r["recovered_rows"]:
        lines.append(f"recovered from an interrupted run: {r['recovered_rows']} orphan rows removed")
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
    from clanet_store.stores.patch_store import PatchStore
    from clanet_store.stores.summary import store_info

    r = store_info(PatchStore(store))
    versions = ", ".join(f"{k} v{v}" for k, v in r["table_versions"].items())
    lines = [
        f"{r['store']}: {r['cell_lines']} cell lines, {r['batches']} batches, "
        f"{r['sequences']} sequences, {r['images']} images, {r['patches']} patches, "
        f"{r['rejected']} rejected",
        f"size on disk {_human_size(r['size_bytes'])}; table versions: {versions}",
    ]
    if r["images"]:
        lines.append(f"time points {r['t_min_h']:.2f} h to {r['t_max_h']:.2f} h")
        cols = ["cell_line", "batch", "sequences", "images", "patches", "t_min_h", "t_max_h",
                "mean_confluency"]  # fmt: skip
        lines += ["", render_table(r["per_batch"], cols)]
    if r["rejects"]:
        lines += ["", "rejected files:", render_table(r["rejects"], ["path", "reason"])]
    emit(fmt, r, "\n".join(lines))
