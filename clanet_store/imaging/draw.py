"""Picture of an extraction, like the paper's Fig. 5 and 9: mask outline and ranked red boxes."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clanet_store.imaging.extract import Extraction

OUTLINE = (0, 255, 255)  # cyan: border of the cell mask
OVERLAY_TINT = (0, 0, 255)  # blue wash over excluded overlay pixels
BOX = (255, 0, 0)


def render_extraction(grey: np.ndarray, extraction: Extraction) -> Image.Image:
    """``grey`` in RGB with the mask outline, the overlays tinted and the boxes ranked."""
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    mask = extraction.mask
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = (
        mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    )
    rgb[mask & ~inner] = OUTLINE
    ex = extraction.exclude
    rgb[ex] = (rgb[ex] // 2 + np.array(OVERLAY_TINT, np.uint8) // 2).astype(np.uint8)
    image = Image.fromarray(rgb)
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, grey.shape[0] // 40))
    for box in extraction.boxes:
        x, y, w, h = (int(box[f]) for f in ("x", "y", "w", "h"))
        pen.rectangle((x, y, x + w - 1, y + h - 1), outline=BOX, width=3)
        pen.text((x + 5, y + 3), str(int(box["rank"])), fill=BOX, font=font)
    return image


def draw_extraction(grey: np.ndarray, extraction: Extraction, path: str | Path) -> None:
    """Write `render_extraction` as a PNG."""
    render_extraction(grey, extraction).save(path, format="PNG")


def draw_gallery(
    rows: list[list[tuple[np.ndarray, str]]], path: str | Path | BinaryIO, scale: int = 2
) -> None:
    """Write a PNG grid of labelled grey patches: one row per query, the query first.

    ``rows`` holds (patch pixels, label) pairs; labels (e.g. line / batch / time) go under each
    patch, and the first patch of a row (the query) gets a red frame.
    """
    side = max((px.shape[0] for row in rows for px, _ in row), default=112) * scale
    label_h, pad = 3 * 14, 6
    width = max((len(row) for row in rows), default=1) * (side + pad) + pad
    height = len(rows) * (side + label_h + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for r, row in enumerate(rows):
        top = pad + r * (side + label_h + pad)
        for c, (pixels, label) in enumerate(row):
            left = pad + c * (side + pad)
            tile = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
            canvas.paste(tile.convert("RGB"), (left, top))
            if c == 0:
                pen.rectangle(
                    (left - 3, top - 3, left + side + 2, top + side + 2), outline=BOX, width=3
                )
            pen.multiline_text((left, top + side + 2), label, fill="black", font=font, spacing=1)
    canvas.save(path, format="PNG")
