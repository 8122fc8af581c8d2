"""The ``patches`` command: brightfield mask + CCS on one image, boxes printed and drawn."""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, main
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
    from clanet_store.pipelines.patches import image_patches

    r = image_patches(image, k, out)
    lines = [
        f"{image}: {r.width} x {r.height}, confluency {r.confluency:.3f}, "
        f"{len(r.boxes)} patches (k={k}), {r.overlay_pixels} overlay pixels excluded",
        "",
        render_table(r.boxes, ["rank", "x", "y", "w", "h", "density"]) if r.boxes else "no patches",
    ]
    if out is not None:
        lines += ["", f"drawing written to {out}"]
    emit(fmt, r.as_dict(), "\n".join(lines))
