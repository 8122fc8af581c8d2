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
