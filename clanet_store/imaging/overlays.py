"""Burned-in overlays of Incucyte exports: find them so that no patch ever contains them.

Exports carry a scale bar with its labels (bottom-left) and a black time stamp box (bottom-right).
Both are found on the grey image itself, anywhere in it, by what makes them unlike cells (the
numbers are `params.OverlayParams`, named here by their fields):

* **scale bar**: a straight horizontal bar, 2 to 8 rows thick and at least ``min_bar_length`` px
  long, of bright pixels (>= ``bar_min_grey``) with a flat grey value (the std along each row is
  at most ``bar_max_std``). Its labels ("0", "um", "400" above it and the field size below it) are
  text in a fixed font, so their box is the bar's box widened by fixed margins
  (``bar_margin_*``), with room for the field size line even under a short bar. On all 72 real
  AZGCB images the bar is rows 984-986 and the labels stay inside rows 944-1023, columns 63-415
  (found from the overlay's colour, which the grey image no longer has); the margins leave a few
  pixels to spare on every side (the real-image tests check this on every image).
* **time stamp box**: a filled near-black rectangle (grey <= ``box_max_grey``) with text inside:
  its top edge is a run of at least ``min_box`` width near-black pixels (at most a quarter of the
  image wide), its two side columns stay near-black down to a bottom edge that is at least 90 %
  near-black, 12 px to a tenth of the image height below. The box is widened by ``box_margin`` px
  for JPEG ringing.

Together the two boxes cover 2.8 % of a 1408 x 1040 export, where the reference drops its bottom
150 rows (14.4 %). An image without overlays (LIVECell crops, synthetic images) has no such bar or
box and loses no pixel; a constant image is not mistaken for one (a bar must be thin, a box
small).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clanet_store.imaging.params import OverlayParams


class Overlay(NamedTuple):
    """One overlay box, half-open pixel ranges [y0, y1) x [x0, x1)."""

    kind: str  # "scale_bar" or "time_stamp"
    y0: int
    x0: int
    y1: int
    x1: int


def find_overlays(grey: np.ndarray, *, params: OverlayParams | None = None) -> list[Overlay]:
    """The overlay boxes of a uint8 grey image (empty when it has none); ``params``: default
    `OverlayParams()`."""
    params = params or OverlayParams()
    return _scale_bars(grey, params) + _time_stamps(grey, params)


def exclusion_mask(shape: tuple[int, int], overlays: list[Overlay]) -> np.ndarray:
    """Boolean image, True inside any overlay box."""
    out = np.zeros(shape, bool)
    for box in overlays:
        out[box.y0 : box.y1, box.x0 : box.x1] = True
    return out


def _scale_bars(grey: np.ndarray, p: OverlayParams) -> list[Overlay]:
    h, w = grey.shape
    bright = grey >= p.bar_min_grey
    rows = np.flatnonzero(np.count_nonzero(bright, axis=1) >= p.min_bar_length)
    starts, stops = _longest_runs(bright[rows])
    runs = [
        (int(r), int(a), int(b))
        for r, a, b in zip(rows, starts, stops, strict=True)
        if b - a >= p.min_bar_length and grey[r, a:b].std() <= p.bar_max_std
    ]
    bars = []
    group: list[tuple[int, int, int]] = []
    for run in [*runs, None]:
        if run is not None and group and _same_bar(group[-1], run, p.bar_align):
            group.append(run)
            continue
        if p.bar_thickness[0] <= len(group) <= p.bar_thickness[1]:
            bars.append(_bar_box(group, h, w, p))
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


def _same_bar(a: tuple[int, int, int], b: tuple[int, int, int], align: int) -> bool:
    """Whether run b is the row under run a, its ends within ``align`` px of a's."""
    return b[0] == a[0] + 1 and abs(b[1] - a[1]) <= align and abs(b[2] - a[2]) <= align


def _bar_box(group: list[tuple[int, int, int]], h: int, w: int, p: OverlayParams) -> Overlay:
    top, bottom = group[0][0], group[-1][0] + 1
    left, right = min(g[1] for g in group), max(g[2] for g in group)
    return Overlay(
        "scale_bar",
        max(top - p.bar_margin_above, 0),
        max(left - p.bar_margin_left, 0),
        min(bottom + p.bar_margin_below, h),
        min(max(right + p.bar_margin_right, left + p.bar_min_width), w),
    )


def _time_stamps(grey: np.ndarray, p: OverlayParams) -> list[Overlay]:
    """Boxes whose top edge is a long near-black run and whose sides and bottom edge are dark."""
    h, w = grey.shape
    dark = grey <= p.box_max_grey
    min_height, min_width = p.min_box
    rows = np.flatnonzero(np.count_nonzero(dark, axis=1) >= min_width)
    starts, stops = _longest_runs(dark[rows])
    boxes: list[Overlay] = []
    for r, a, b in zip(rows, starts, stops, strict=True):
        if b - a < min_width or b - a > w // 4 or any(o.y0 <= r < o.y1 for o in boxes):
            continue
        sides = dark[r : r + h // 10 + 1, a] & dark[r : r + h // 10 + 1, b - 1]
        height = int(np.argmin(sides)) if not sides.all() else len(sides)
        if not min_height <= height <= h // 10:
            continue
        if dark[r + height - 1, a:b].mean() >= p.box_bottom_dark:
            boxes.append(
                Overlay(
                    "time_stamp",
                    max(int(r) - p.box_margin, 0),
                    max(int(a) - p.box_margin, 0),
                    min(int(r) + height + p.box_margin, h),
                    min(int(b) + p.box_margin, w),
                )
            )
    return boxes
