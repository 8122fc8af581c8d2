"""Burned-in overlays of Incucyte exports: find them so that no patch ever contains them.

Exports carry a scale bar with its labels (bottom-left) and a black time stamp box (bottom-right).
Both are found on the grey image itself, anywhere in it, by what makes them unlike cells:

* **scale bar**: a straight horizontal bar, 2 to 8 rows thick and at least ``MIN_BAR_LENGTH`` px
  long, of bright pixels (>= ``BAR_MIN_GREY``) with a flat grey value (the std along each row is
  at most ``BAR_MAX_STD``). Its labels ("0", "um", "400" above it and the field size below it) are
  text in a fixed font, so their box is the bar's box widened by fixed margins
  (``BAR_MARGINS``), with room for the field size line even under a short bar. On all 72 real
  AZGCB images the bar is rows 984-986 and the labels stay inside rows 944-1023, columns 63-415
  (found from the overlay's colour, which the grey image no longer has); the margins leave a few
  pixels to spare on every side (the real-image tests check this on every image).
* **time stamp box**: a filled near-black rectangle (grey <= ``BOX_MAX_GREY``) with text inside:
  its top edge is a run of at least ``MIN_BOX`` width near-black pixels (at most a quarter of the
  image wide), its two side columns stay near-black down to a bottom edge that is at least 90 %
  near-black, 12 px to a tenth of the image height below. The box is widened by ``BOX_MARGIN`` px
  for JPEG ringing.

Together the two boxes cover 2.8 % of a 1408 x 1040 export, where the reference drops its bottom
150 rows (14.4 %). An image without overlays (LIVECell crops, synthetic images) has no such bar or
box and loses no pixel; a constant image is not mistaken for one (a bar must be thin, a box
small).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

BAR_MIN_GREY = 190
BAR_MAX_STD = 12.0
MIN_BAR_LENGTH = 100
BAR_THICKNESS = (2, 8)
BAR_ALIGN = 4  # px: rows of one bar start and end within this distance of each other
BAR_MARGINS = {"above": 48, "below": 44, "left": 16, "right": 40, "min_width": 320}
BOX_MAX_GREY = 24
MIN_BOX = (12, 60)  # height, width
BOX_BOTTOM_DARK = 0.9
BOX_MARGIN = 3


class Overlay(NamedTuple):
    """One overlay box, half-open pixel ranges [y0, y1) x [x0, x1)."""

    kind: str  # "scale_bar" or "time_stamp"
    y0: int
    x0: int
    y1: int
    x1: int


def find_overlays(grey: np.ndarray) -> list[Overlay]:
    """The overlay boxes of a uint8 grey image (empty when it has none)."""
    return _scale_bars(grey) + _time_stamps(grey)


def exclusion_mask(shape: tuple[int, int], overlays: list[Overlay]) -> np.ndarray:
    """Boolean image, True inside any overlay box."""
    out = np.zeros(shape, bool)
    for box in overlays:
        out[box.y0 : box.y1, box.x0 : box.x1] = True
    return out


def _scale_bars(grey: np.ndarray) -> list[Overlay]:
    h, w = grey.shape
    bright = grey >= BAR_MIN_GREY
    rows = np.flatnonzero(np.count_nonzero(bright, axis=1) >= MIN_BAR_LENGTH)
    starts, stops = _longest_runs(bright[rows])
    runs = [
        (int(r), int(a), int(b))
        for r, a, b in zip(rows, starts, stops, strict=True)
        if b - a >= MIN_BAR_LENGTH and grey[r, a:b].std() <= BAR_MAX_STD
    ]
    bars = []
    group: list[tuple[int, int, int]] = []
    for run in [*runs, None]:
        if run is not None and group and _same_bar(group[-1], run):
            group.append(run)
            continue
        if BAR_THICKNESS[0] <= len(group) <= BAR_THICKNESS[1]:
            bars.append(_bar_box(group, h, w))
        group = [run] if run is not None else []
    return bars


def _longest_runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, stop) of the longest run of True in each row of a 2-D boolean array."""
    if rows.shape[0] == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    count = np.cumsum(rows, axis=1, dtype=np.int16 if rows.shape[1] < 2**15 else np.int32)
    count -= np.maximum.accumulate(np.where(rows, 0, count), axis=1)  # length of the run so far
    stops = np.argmax(count, axis=1) + 1
    return stops - count[np.arange(len(rows)), stops - 1], stops


def _same_bar(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return b[0] == a[0] + 1 and abs(b[1] - a[1]) <= BAR_ALIGN and abs(b[2] - a[2]) <= BAR_ALIGN


def _bar_box(group: list[tuple[int, int, int]], h: int, w: int) -> Overlay:
    m = BAR_MARGINS
    top, bottom = group[0][0], group[-1][0] + 1
    left, right = min(g[1] for g in group), max(g[2] for g in group)
    return Overlay(
        "scale_bar",
        max(top - m["above"], 0),
        max(left - m["left"], 0),
        min(bottom + m["below"], h),
        min(max(right + m["right"], left + m["min_width"]), w),
    )


def _time_stamps(grey: np.ndarray) -> list[Overlay]:
    """Boxes whose top edge is a long near-black run and whose sides and bottom edge are dark."""
    h, w = grey.shape
    dark = grey <= BOX_MAX_GREY
    rows = np.flatnonzero(np.count_nonzero(dark, axis=1) >= MIN_BOX[1])
    starts, stops = _longest_runs(dark[rows])
    boxes: list[Overlay] = []
    for r, a, b in zip(rows, starts, stops, strict=True):
        if b - a < MIN_BOX[1] or b - a > w // 4 or any(o.y0 <= r < o.y1 for o in boxes):
            continue
        sides = dark[r : r + h // 10 + 1, a] & dark[r : r + h // 10 + 1, b - 1]
        height = int(np.argmin(sides)) if not sides.all() else len(sides)
        if not MIN_BOX[0] <= height <= h // 10:
            continue
        if dark[r + height - 1, a:b].mean() >= BOX_BOTTOM_DARK:
            boxes.append(
                Overlay(
                    "time_stamp",
                    max(int(r) - BOX_MARGIN, 0),
                    max(int(a) - BOX_MARGIN, 0),
                    min(int(r) + height + BOX_MARGIN, h),
                    min(int(b) + BOX_MARGIN, w),
                )
            )
    return boxes
