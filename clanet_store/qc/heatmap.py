"""Plate-layout heatmap of per-well scores as a PNG (SPEC 8: scores over plate / flask positions).

Layouts: ``96`` (A-H x 1-12), ``384`` (A-P x 1-24), ``present`` (only the rows and columns that
hold a scored well) and ``auto`` (96 if every well fits, else 384). Colours: viridis over
[vmin, vmax]; wells without a score are light grey; wells above ``threshold`` get a red frame.
Drawn with Pillow (no plotting library needed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clanet_store.exports.names import WELL_COLUMNS, WELL_ROWS

LAYOUTS = ("auto", "96", "384", "present")
# viridis at 0, 1/8, ..., 1
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 82, 139),
        (44, 113, 142),
        (33, 145, 140),
        (39, 173, 129),
        (94, 201, 98),
        (170, 220, 50),
        (253, 231, 37),
    ],
    np.float64,
)
_WELL = re.compile(r"^([A-Z])(\d+)$")
EMPTY = (225, 225, 225)
FLAG = (220, 0, 0)


def colour(value: float, vmin: float = 0.0, vmax: float = 1.0) -> tuple[int, int, int]:
    """The viridis colour of ``value`` on the scale [vmin, vmax] (clipped)."""
    t = 0.0 if vmax <= vmin else float(np.clip((value - vmin) / (vmax - vmin), 0.0, 1.0))
    pos = t * (len(_VIRIDIS) - 1)
    i = min(int(pos), len(_VIRIDIS) - 2)
    rgb = _VIRIDIS[i] + (pos - i) * (_VIRIDIS[i + 1] - _VIRIDIS[i])
    return tuple(round(c) for c in rgb)


def _split_well(well: str) -> tuple[int, int]:
    m = _WELL.match(well)
    if m is None or m.group(1) not in WELL_ROWS or not 1 <= int(m.group(2)) <= WELL_COLUMNS:
        raise ValueError(f"{well!r} is not a plate well (A1 .. P24)")
    return WELL_ROWS.index(m.group(1)), int(m.group(2))


def plate_grid(wells: list[str], layout: str = "auto") -> tuple[list[str], list[int]]:
    """Row letters and column numbers of the drawn plate."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    cells = [_split_well(w) for w in wells]
    if layout == "present":
        return [WELL_ROWS[r] for r in sorted({r for r, _ in cells})], sorted({c for _, c in cells})
    fits_96 = all(r < 8 and c <= 12 for r, c in cells)
    n_rows, n_cols = (8, 12) if layout == "96" or (layout == "auto" and fits_96) else (16, 24)
    if layout == "96" and not fits_96:
        raise ValueError("some wells lie outside a 96-well plate (A-H x 1-12)")
    return list(WELL_ROWS[:n_rows]), list(range(1, n_cols + 1))


def plate_heatmap(
    values: Mapping[str, float],
    title: str = "",
    threshold: float | None = None,
    layout: str = "auto",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Image.Image:
    """An RGB image of ``values`` (well -> score) laid out as the plate, with a colour bar."""
    rows, cols = plate_grid(list(values), layout)
    cell = 48 if len(cols) <= 12 else 32
    left, top, bar = 28, 44, 70
    title_font = ImageFont.load_default(size=14)
    title_width = int(title_font.getlength(title)) + 8
    width = max(left + cell * len(cols) + bar, title_width)
    height = top + cell * len(rows) + 10
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12 if cell > 32 else 10)
    pen.text((4, 4), title, fill="black", font=title_font)
    for j, c in enumerate(cols):
        pen.text(
            (left + j * cell + cell // 2, top - 4), str(c), fill="black", font=font, anchor="mb"
        )
    for i, r in enumerate(rows):
        pen.text((left // 2, top + i * cell + cell // 2), r, fill="black", font=font, anchor="mm")
        for j, c in enumerate(cols):
            box = (
                left + j * cell,
                top + i * cell,
                left + (j + 1) * cell - 2,
                top + (i + 1) * cell - 2,
            )
            value = values.get(f"{r}{c}")
            if value is None:
                pen.rectangle(box, fill=EMPTY)
                continue
            fill = colour(value, vmin, vmax)
            flagged = threshold is not None and value > threshold
            pen.rectangle(box, fill=fill, outline=FLAG if flagged else None, width=3)
            if cell > 32:
                ink = "white" if sum(fill) < 380 else "black"
                centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
                pen.text(centre, f"{value:.2f}", fill=ink, font=font, anchor="mm")
    _colour_bar(pen, (width - bar + 12, top), cell * len(rows) - 2, vmin, vmax, threshold, font)
    return image


def _colour_bar(pen, origin, length, vmin, vmax, threshold, font) -> None:
    x0, y0 = origin
    for k in range(length):
        pen.line(
            (x0, y0 + k, x0 + 12, y0 + k), fill=colour(vmax - (vmax - vmin) * k / (length - 1))
        )
    pen.text((x0 + 16, y0), f"{vmax:.2f}", fill="black", font=font, anchor="lt")
    pen.text((x0 + 16, y0 + length), f"{vmin:.2f}", fill="black", font=font, anchor="lb")
    if threshold is not None and vmin < threshold < vmax:
        y = y0 + round((vmax - threshold) / (vmax - vmin) * (length - 1))
        pen.line((x0 - 3, y, x0 + 14, y), fill=FLAG, width=2)
        pen.text((x0 + 16, y), f"{threshold:.2f}", fill=FLAG, font=font, anchor="lm")


def save_plate_heatmap(values: Mapping[str, float], path: str | Path, **options) -> Path:
    """Write ``plate_heatmap(values, **options)`` as a PNG; return the path."""
    path = Path(path)
    plate_heatmap(values, **options).save(path, format="PNG")
    return path
