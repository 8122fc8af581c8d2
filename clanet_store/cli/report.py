"""The ``report`` command: one self-contained HTML page about a store and its models."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, human_size, main, store_option
from clanet_store.cli.mil import ssl_checkpoint_option


@main.command()
@store_option
@click.option(
    "--model",
    "models",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="a MIL model file to evaluate (repeat; repeats of one variant are pooled)",
)
@click.option(
    "--export",
    "exports",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="where the original images are, if moved (default: the store's export roots)",
)
@click.option("--model-id", help="whose embeddings to project and search (default: the latest)")
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="patches per image in the embedding projection",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="report.html",
    show_default=True,
)
@ssl_checkpoint_option
@format_option
def report(
    store: Path,
    models: tuple[Path, ...],
    exports: tuple[Path, ...],
    model_id: str | None,
    k: int,
    out: Path,
    ssl_checkpoint: Path | None,
    fmt: str,
) -> None:
    """Write an HTML report: dataset, growth, patches, embeddings, models, neighbours."""
    from clanet_store.report.build import write_report

    r = write_report(store, out, models, model_id, k, _stage, exports, (), ssl_checkpoint)
    human = (
        f"report written to {r.report} ({human_size(r.bytes)}, {r.sections} sections, "
        f"{r.images} figures) in {r.seconds:.1f} s"
    )
    emit(fmt, r.as_dict(), human)


def _stage(name: str) -> None:
    click.echo(f"  report: {name}", err=True)
