"""The ``index`` and ``search`` commands: similar patches across batches."""

from __future__ import annotations

from pathlib import Path

import click
import polars as pl

from clanet_store.cli.app import emit, main, store_option, wait_option
from clanet_store.errors import ClanetError
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
    kind = (
        f"IVF_RQ cosine, {r['num_partitions']} partitions, {r['num_bits']} bit per dimension"
        if r["vector_index"]
        else "no vector index (small table: searches are exact)"
    )
    human = (
        f"{store}: table {r['table']} ({r['rows']} rows, model {r['model_id']}): {kind}; "
        f"scalar indexes on {', '.join(r['scalar_indexes'])}; {r['seconds']:.1f} s"
    )
    emit(fmt, r, human)


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
    from clanet_store.imaging.decode import ImageDecodeError, read_grey
    from clanet_store.imaging.draw import draw_gallery
    from clanet_store.pipelines.encode import encoder_for_model
    from clanet_store.pipelines.search import gallery_row, neighbours_of_image
    from clanet_store.stores.embedding_store import EmbeddingStore
    from clanet_store.stores.filters import parse_filters

    if (patch_id is None) == (image is None):
        raise click.UsageError("give exactly one of --patch-id and --image")
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    es = EmbeddingStore(store)
    model = es.model_row(model_id)
    condition = parse_filters(where, es.table(model["table"]).schema)
    if patch_id is not None:
        found = es.search(patch_id, k, condition, model["model_id"], other_batches)
        keys = es.patch_keys(patch_id, model["model_id"])
        query = {"patch_id": patch_id, **{k: keys[k] for k in ("cell_line", "batch", "image_id")}}
        queries = [(query, es.patches([patch_id])[0], found)]
    else:
        if other_batches:
            raise click.UsageError("--other-batches needs --patch-id (a new image has no batch)")
        xy = _parse_box(box) if box else None
        try:
            grey = read_grey(image)
        except (ImageDecodeError, OSError) as exc:
            raise ClanetError(str(exc)) from None
        encoder = encoder_for_model(model, weights)
        queries = neighbours_of_image(es, encoder, grey, k, xy, where=condition)
    results = pl.concat(
        [found.with_columns(query=pl.lit(i)) for i, (_, _, found) in enumerate(queries)],
        how="vertical_relaxed",
    )
    if show is not None:
        draw_gallery([gallery_row(es, *q) for q in queries], show)
    if fmt == "parquet":
        results.write_parquet(out)
        click.echo(f"{results.height} results written to {out}")
        return
    payload = {
        "model_id": model["model_id"],
        "queries": [keys for keys, _, _ in queries],
        "results": results.to_dicts(),
        "gallery": None if show is None else str(show),
    }
    blocks = []
    for i, (keys, _, found) in enumerate(queries):
        blocks += [f"query {i}: {_describe(keys)}", render_table(found.to_dicts(), SHOWN), ""]
    if show is not None:
        blocks.append(f"gallery written to {show}")
    emit(fmt, payload, "\n".join(blocks).rstrip())


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
