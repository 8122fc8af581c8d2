"""The ``patches`` command: brightfield mask + CCS on one image, boxes printed and drawn."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, main
from clanet_store.errors import ClanetError
from clanet_store.textout import render_table


@main.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--k", type=click.IntRange(min=1, max=20), default=10, show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG with mask outline and boxes"
)
@format_option
def patches(image: Path, k: int, out: Path | None, fmt: str) -> None:
    """Run mask + CCS on one image: print the top-K boxes and optionally draw them."""
    from clanet_store.imaging.decode import ImageDecodeError, read_grey
    from clanet_store.imaging.draw import draw_extraction
    from clanet_store.imaging.extract import EXTRACTOR_VERSION, extract

    try:
        grey = read_grey(image)
    except (ImageDecodeError, OSError) as exc:
        raise ClanetError(str(exc)) from None
    result = extract(grey, k=k)
    if out is not None:
        draw_extraction(grey, result, out)
    boxes = [{name: box[name].item() for name in result.boxes.dtype.names} for box in result.boxes]
    payload = {
        "image": str(image),
        "height": grey.shape[0],
        "width": grey.shape[1],
        "confluency": result.confluency,
        "mask_fraction": result.mask_fraction,
        "overlay_pixels": int(result.exclude.sum()),
        "extractor_version": EXTRACTOR_VERSION,
        "boxes": boxes,
        "drawing": None if out is None else str(out),
    }
    lines = [
        f"{image}: {grey.shape[1]} x {grey.shape[0]}, confluency {result.confluency:.3f}, "
        f"{len(boxes)} patches (k={k}), {payload['overlay_pixels']} overlay pixels excluded",
        "",
        render_table(boxes, ["rank", "x", "y", "w", "h", "density"]) if boxes else "no patches",
    ]
    if out is not None:
        lines += ["", f"drawing written to {out}"]
    emit(fmt, payload, "\n".join(lines))
