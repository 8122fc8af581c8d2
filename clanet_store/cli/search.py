"""The ``index`` and ``search`` commands: similar patches across batches."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, main, store_option, wait_option
from clanet_store.textout import render_table

SHOWN = ["patch_id", "cell_line", "batch", "well", "location", "timepoint_h", "distance", "path"]


@main.command()
@store_option
@click.option("--model-id", help="which encoder's embeddings (default: the latest)")
@wait_option
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def index(store: Path, model_id: str | None, wait: bool, fmt: str) -> None:
    """Build scalar + vector indexes on the embeddings, compact tables, prune old versions."""
    from clanet_store.pipelines.search import build_index

    r = build_index(store, model_id, wait=wait)
    params = r.vector_params
    kind = (
        f"IVF_RQ cosine, {params['num_partitions']} partitions, {params['num_bits']} bit per "
        "dimension"
        if r.vector_index
        else "no vector index (small table: searches are exact)"
    )
    human = (
        f"{store}: table {r.table} ({r.rows} rows, model {r.model_id}): {kind}; "
        f"scalar indexes on {', '.join(r.scalar_indexes)}; {r.seconds:.1f} s"
    )
    emit(fmt, r.as_dict(), human)


@main.command()
@store_option
@click.option("--patch-id", help="query with a stored patch")
@click.option(
    "--image", type=click.Path(dir_okay=False, path_type=Path), help="query with a new image"
)
@click.option(
    "--box", help="x,y of the 112-px patch of --image to query with (default: CCS patches)"
)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--where", "where", multiple=True, help="filter, e.g. cell_line=A549 or batch!=b2")
@click.option("--other-batches", is_flag=True, help="exclude the query patch's own batch")
@click.option("--model-id", help="which encoder's embeddings (default: the latest)")
@click.option(
    "--weights", type=click.Path(dir_okay=False, path_type=Path), help="encoder weights (--image)"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "parquet"]),
    default="table",
    show_default=True,
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="file for --format parquet"
)
@click.option("--show", type=click.Path(dir_okay=False, path_type=Path), help="write a gallery PNG")
def search(
    store: Path,
    patch_id: str | None,
    image: Path | None,
    box: str | None,
    k: int,
    where: tuple[str, ...],
    other_batches: bool,
    model_id: str | None,
    weights: Path | None,
    fmt: str,
    out: Path | None,
    show: Path | None,
) -> None:
    """Find the patches most similar (cosine) to a stored patch or to a new image's patches."""
    from clanet_store.pipelines.search import search as search_patches

    if (patch_id is None) == (image is None):
        raise click.UsageError("give exactly one of --patch-id and --image")
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    if image is not None and other_batches:
        raise click.UsageError("--other-batches needs --patch-id (a new image has no batch)")
    found = search_patches(
        store,
        patch_id=patch_id,
        image=image,
        box=_parse_box(box) if box else None,
        k=k,
        where=where,
        other_batches=other_batches,
        model_id=model_id,
        weights=weights,
        gallery=show,
    )
    if fmt == "parquet":
        results = found.results()
        results.write_parquet(out)
        click.echo(f"{results.height} results written to {out}")
        return
    blocks = []
    for i, query in enumerate(found.queries):
        blocks += [
            f"query {i}: {_describe(query.keys)}",
            render_table(query.found.to_dicts(), SHOWN),
            "",
        ]
    if show is not None:
        blocks.append(f"gallery written to {show}")
    emit(fmt, found.as_dict(), "\n".join(blocks).rstrip())


def _parse_box(text: str) -> tuple[int, int]:
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not x,y (two integers)", param_hint="--box"
        ) from None
    return x, y


def _describe(keys: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items() if v is not None)
