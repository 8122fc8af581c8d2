"""``export-profiles``: a model's embeddings as profiles for pycytominer or scanpy."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, main, store_option
from clanet_store.cli.encoders import encoder_banner, top_k_option
from clanet_store.cli.progress import progress_bars


@main.command("export-profiles")
@store_option
@click.option("--model-id", help="encoder whose embeddings to export (default: the latest)")
@click.option(
    "--level",
    type=click.Choice(["patch", "image", "sequence"]),
    default="patch",
    show_default=True,
    help="one row per patch, per image (mean of its top-k patches) or per sequence",
)
@click.option(
    "--to",
    "file_format",
    type=click.Choice(["parquet", "anndata"]),
    help="Parquet with Metadata_ columns (pycytominer) or AnnData .h5ad (scanpy); default: "
    "anndata for an --out ending in .h5ad, else parquet",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="file to write"
)
@top_k_option
@format_option
def export_profiles(
    store: Path,
    model_id: str | None,
    level: str,
    file_format: str | None,
    out: Path,
    top_k: int,
    fmt: str,
) -> None:
    """Write one row per patch, image or sequence: keys as metadata, the embedding as features."""
    from clanet_store.pipelines.export_profiles import export_profiles as run

    file_format = file_format or ("anndata" if out.suffix.lower() == ".h5ad" else "parquet")
    with progress_bars("patch") as update:
        r = run(store, out, level, file_format, model_id, top_k, progress=update).as_dict()
    lines = [
        f"{r['rows']} {level} rows x {r['features']} features of model {r['model_id']} -> "
        f"{r['path']} ({file_format}), {r['seconds']:.1f} s ({r['rows_per_s']:.0f} rows/s)",
        *encoder_banner(r, collapsed=False),
    ]
    emit(fmt, r, "\n".join(lines))
