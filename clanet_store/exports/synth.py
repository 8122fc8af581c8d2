"""Synthetic Incucyte brightfield exports: the embedded default for the demo and the tests.

Real exports are private, so this module renders look-alike 1408 x 1040 time-lapse images
(SPEC section 1): a flat grey background with faint streaks and debris, cells with a bright phase
halo and darker cytoplasm, per-cell-line morphology a model can learn, logistic growth of one
field over time, the paper's three batch effects (seeding density, image quality, imaging
interval and duration) and the burned-in overlays (scale bar bottom-left, time-stamp box
bottom-right). ``render_image`` is pure; ``synth_export`` writes an export tree.

Cells are a Voronoi-like packing: every pixel belongs to its nearest cell (nearest of three seeds
along the cell's long axis, so spindles are not cut short) and is inside it when its signed
distance to the cell's outline (a blend of a capsule and a pointed lens) is negative. Crowded
cells are therefore squeezed against each other, as in a confluent flask, and confluency
saturates. Rendering is vectorised; the per-pixel work runs in bands of rows to stay in cache.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from clanet_store.exports.names import WELL_COLUMNS, WELL_ROWS, ImageName, format_name

UM_PER_PX = 1.245
"""Incucyte S3 10x pixel size (SPEC: about 1.24); 1.245 reproduces the real overlays: a 400 um bar
of 322 px and the field label ``1.75 x 1.29 mm, 2.27 mm²``."""
IMAGE_SIZE = (1040, 1408)
"""(height, width) of an S3 export."""
JPEG_QUALITY = 90
_BAND_ROWS = 64  # rows shaded at a time: the per-pixel temporaries stay in cache (3x faster)
_DAUGHTER_SPREAD_H = 1.5
MAX_POSITIONS = 200
"""Positions per batch; one well per position must fit on a 384-well plate."""

# (folder name, file-name prefix): invented, shaped like real names; the folder is the truth, the
# prefix may differ from it as in real exports (folder ``HT 1080``, files ``HT1080_...``).
_LINE_NAMES = (
    ("KLM 14", "KLM14"),
    ("NCI H3371", "NCI H3371"),
    ("BRX4", "BRX4"),
    ("OVC-318", "OVC-318"),
    ("HTC 92", "HTC 92"),
    ("LN27", "LN27"),
    ("MCX-5", "MCX-5"),
    ("PDR 112", "PDR112"),
    ("SAK9", "SAK9"),
    ("TRL402", "TRL402"),
    ("VMC 7", "VMC 7"),
    ("EHB1", "EHB1"),
)

# Real overlay geometry, measured on 1408 x 1040 exports, as offsets from the bottom edge (rows)
# and from the left or right edge (columns).
_BAR_COLOUR = 222  # luminance of the pale-yellow scale bar of real exports
_BAR_X0 = 70
_BAR_X1 = _BAR_X0 + round(400 / UM_PER_PX)
_BAR_BOTTOM = 1040 - 984  # bar rows 984-986
_BOX_RIGHT, _BOX_LEFT = 1408 - 1397, 1408 - 1241  # box columns 1241-1397
_BOX_BOTTOM, _BOX_TOP = 1040 - 1037, 1040 - 1009  # box rows 1009-1037


@dataclass(frozen=True, slots=True)
class LineStyle:
    """Morphology of one synthetic cell line; lengths in pixels, intensities in grey levels.

    - name: folder name (the cell line label); prefix: file-name prefix of its own experiments.
    - radius_px: mean radius of a spread cell; size_cv: cell-to-cell size variation.
    - elongation: mean aspect ratio of spread cells (1 round, 4 spindle).
    - pointiness: 0 rounded (capsule) ends, 1 tapered lens-shaped ends.
    - alignment: 0 random orientations, 1 neighbours parallel (a smooth orientation field).
    - clustering: 0 scattered cells, 1 compact colonies (seeded clumps that grow as discs).
    - doubling_h: population doubling time (logistic growth up to confluence).
    - round_fraction: cells that stay rounded (mitotic or loose: small, dark, strong halo).
    - spread_h: time seeded cells take to attach and spread (daughters take about 1.5 h).
    - rim: brightness of the phase halo round a spread cell and of cell-cell junctions.
    - body: cytoplasm offset from the background (negative is darker).
    - texture, grain_px: amplitude and size of the granules in the cytoplasm.
    - nucleus: nucleus radius as a fraction of the cell's half-width (below 0.05: none).
    - ruffle: irregularity of the outline, as a fraction of the half-width.
    """

    name: str
    prefix: str
    radius_px: float
    size_cv: float
    elongation: float
    pointiness: float
    alignment: float
    clustering: float
    doubling_h: float
    round_fraction: float
    spread_h: float
    rim: float
    body: float
    texture: float
    grain_px: float
    nucleus: float
    ruffle: float


@dataclass(frozen=True, slots=True)
class BatchStyle:
    """One batch (one flask of one cell line in one experiment) and its batch effects.

    - name: batch folder and experiment id (``VID1501``); prefix: file-name prefix (the
      experiment id or the cell line's prefix); wells: one, or one per position.
    - seeding_per_mm2: cells seeded per mm2 (batch effect 1, seeding density).
    - brightness (background grey level), contrast (gain of everything but the background),
      blur_px (defocus, Gaussian sigma), noise (sensor noise std), vignetting (corner
      darkening): batch effect 2, image quality.
    - interval_h (1-8 h) and start_min (elapsed minutes at the first scan, real minutes such as
      11 h 26 min): batch effect 3, imaging interval and duration.
    """

    name: str
    prefix: str
    wells: tuple[str, ...]
    seeding_per_mm2: float
    interval_h: int
    start_min: int
    brightness: float
    contrast: float
    blur_px: float
    noise: float
    vignetting: float

    def elapsed_minutes(self, timepoints: int) -> tuple[int, ...]:
        """Elapsed minutes of each scan: the start, then one scan every ``interval_h``."""
        return tuple(self.start_min + k * self.interval_h * 60 for k in range(timepoints))

    def duration_h(self, timepoints: int) -> float:
        """Hours from the first to the last of ``timepoints`` scans."""
        return (timepoints - 1) * self.interval_h


# Ranges spanned by line_styles, the most visible first (they get the best-spread sequence axes).
_LINE_RANGES = {
    "radius_px": (9.0, 17.0),
    "elongation": (1.0, 4.0),
    "clustering": (0.2, 0.97),
    "rim": (50.0, 110.0),
    "body": (-10.0, 6.0),
    "round_fraction": (0.02, 0.15),
    "texture": (8.0, 24.0),
    "nucleus": (0.0, 0.7),
    "pointiness": (0.0, 1.0),
    "alignment": (0.0, 0.9),
    "doubling_h": (20.0, 50.0),
    "size_cv": (0.08, 0.3),
    "spread_h": (3.0, 18.0),
    "grain_px": (0.5, 1.1),
    "ruffle": (0.0, 0.35),
}


def _line_name(index: int) -> tuple[str, str]:
    """(folder name, file prefix) of line ``index``; a suffix keeps names unique past the table."""
    name, prefix = _LINE_NAMES[index % len(_LINE_NAMES)]
    rounds = index // len(_LINE_NAMES)
    return (name, prefix) if rounds == 0 else (f"{name}-{rounds + 1}", f"{prefix}-{rounds + 1}")


def line_style(index: int, seed: int = 0) -> LineStyle:
    """The morphology of line ``index`` for a seed.

    An R_d quasi-random sequence (generalised golden ratio) over the parameter ranges with a
    seeded offset: it depends only on (seed, index), and any two lines (32 tried) differ by at
    least a quarter of the range in one of the six most visible parameters.
    """
    dims = len(_LINE_RANGES)
    phi = 2.0
    for _ in range(60):  # fixed point of x = (1 + x) ** (1 / (dims + 1))
        phi = (1.0 + phi) ** (1.0 / (dims + 1))
    steps = phi ** -np.arange(dims, 0, -1.0)  # fastest-moving axes first
    offsets = np.random.default_rng([seed, 7]).random(dims)
    q = (offsets + (index + 1) * steps) % 1.0
    values = {
        k: float(lo + qk * (hi - lo))
        for (k, (lo, hi)), qk in zip(_LINE_RANGES.items(), q, strict=True)
    }
    name, prefix = _line_name(index)
    return LineStyle(name=name, prefix=prefix, **values)


def line_styles(n: int, seed: int = 0) -> tuple[LineStyle, ...]:
    """The first ``n`` line styles for a seed."""
    return tuple(line_style(i, seed) for i in range(n))


def _check_count(name: str, value: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name} must be an integer from 1 to {high}, got {value!r}")


def _toward(typical: float, value: float, strength: float, log: bool = False) -> float:
    """``value`` moved toward ``typical``: strength 1 keeps it, 0 gives ``typical`` (in log
    space when ``log``)."""
    if strength == 1:
        return value
    if log:
        return float(np.exp(np.log(typical) + strength * (np.log(value) - np.log(typical))))
    return typical + strength * (value - typical)


def batch_style(
    line: LineStyle,
    line_index: int,
    batch_index: int,
    positions: int,
    seed: int = 0,
    batch_effects: float = 1.0,
) -> BatchStyle:
    """The batch effects of batch ``batch_index`` of a line, deterministic for the arguments.

    The experiment id is unique per (line, batch) for up to 100 batches per line. Even batches
    image ``positions`` locations of one well, odd batches one well per position (location 1), so
    both real conventions appear. About half of the batches use the experiment id as file prefix.
    ``batch_effects`` scales every batch effect's distance from its typical value (seeding 224
    per mm2, a 4 h interval from 0 h, brightness 98, contrast 1, blur 0.55 px, noise 3,
    vignetting 4): 1 the paper's spread, 0 none (the same draws, so milder exports keep their
    batches' directions).
    """
    _check_count("positions", positions, MAX_POSITIONS)
    if not 0 <= batch_effects <= 1:
        raise ValueError(f"batch_effects must be from 0 to 1, got {batch_effects!r}")
    rng = np.random.default_rng([seed, 11, line_index, batch_index])
    experiment = f"VID{1501 + 100 * line_index + batch_index}"
    first = int(rng.integers(1, 7)) * WELL_COLUMNS + int(rng.integers(0, 12))
    indices = range(first, first + positions) if batch_index % 2 else (first,)
    wells = tuple(f"{WELL_ROWS[i // WELL_COLUMNS]}{i % WELL_COLUMNS + 1}" for i in indices)
    return BatchStyle(
        name=experiment,
        prefix=experiment if rng.random() < 0.5 else line.prefix,
        wells=wells,
        seeding_per_mm2=_toward(
            math.sqrt(100.0 * 500.0),
            float(np.exp(rng.uniform(np.log(100.0), np.log(500.0)))),
            batch_effects,
            log=True,
        ),
        interval_h=round(_toward(4, int(rng.integers(1, 9)), batch_effects)),
        start_min=round(
            batch_effects * (0 if rng.random() < 0.3 else int(rng.integers(60, 72 * 60)))
        ),
        brightness=_toward(98.0, float(np.clip(rng.normal(98.0, 6.0), 80.0, 118.0)), batch_effects),
        contrast=_toward(
            1.0, float(np.exp(rng.uniform(np.log(0.7), np.log(1.35)))), batch_effects, log=True
        ),
        blur_px=_toward(0.55, float(rng.uniform(0.2, 0.9)), batch_effects),
        noise=_toward(3.0, float(rng.uniform(1.0, 5.0)), batch_effects),
        vignetting=_toward(4.0, float(rng.uniform(0.0, 8.0)), batch_effects),
    )


@dataclass(frozen=True, slots=True)
class _Population:
    """Every cell that a field will ever hold, in birth order (first the seeded ones)."""

    birth_h: np.ndarray
    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    elongation: np.ndarray
    theta: np.ndarray
    rounded: np.ndarray
    wobble: np.ndarray
    margin: float


def _logistic_births(n0: int, capacity: int, doubling_h: float) -> np.ndarray:
    """Birth times (h) of cells 0..capacity-2 under logistic growth from n0 cells at 0 h."""
    rate = math.log(2.0) / doubling_h
    i = np.arange(capacity - 1, dtype=np.float64)
    born = np.zeros_like(i)
    later = i >= n0
    born[later] = np.log((capacity / n0 - 1.0) / (capacity / (i[later] + 1.0) - 1.0)) / rate
    return born


def _colonies(
    free_x: np.ndarray,
    free_y: np.ndarray,
    near: np.ndarray,
    parent_u: np.ndarray,
    angle: np.ndarray,
    reach: np.ndarray,
    spacing: float,
    bounds: tuple[float, float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Cell positions: a cell that is not ``near`` keeps its free position and founds a colony;
    a near cell joins the colony of a random earlier cell (``parent_u``), on the rim of a disc of
    ``spacing**2 * pi`` per member, in the parent's direction from the founder turned by a third
    of ``angle``. Colonies stay compact: their area grows with their cell count.
    """
    xs, ys = free_x.tolist(), free_y.tolist()
    parent_at, angles, reaches = parent_u.tolist(), angle.tolist(), reach.tolist()
    root = list(range(len(xs)))
    members = [1] * len(xs)
    x_lo, x_hi, y_lo, y_hi = bounds
    for i in (np.flatnonzero(near[1:]) + 1).tolist():
        j = int(parent_at[i] * i)
        r = root[i] = root[j]
        members[r] += 1
        out_x, out_y = xs[j] - xs[r], ys[j] - ys[r]
        turn = angles[i] / 3.0
        norm = math.hypot(out_x, out_y)
        if norm < 1e-6:  # the parent is the founder: any direction
            out_x, out_y, norm, turn = 1.0, 0.0, 1.0, angles[i]
        c, s = math.cos(turn), math.sin(turn)
        dist = spacing * math.sqrt(members[r]) * reaches[i] / norm
        xs[i] = min(max(xs[r] + dist * (c * out_x - s * out_y), x_lo), x_hi)
        ys[i] = min(max(ys[r] + dist * (s * out_x + c * out_y), y_lo), y_hi)
    return np.array(xs), np.array(ys)


def _population(
    line: LineStyle, batch: BatchStyle, size: tuple[int, int], rng: np.random.Generator
) -> _Population:
    """Draw the cells of one field; a later cell is mostly born next to an earlier one.

    All arrays are drawn at their full length before positions are chained, so the cells of any
    time point are a prefix of the same list: a time-lapse shows one field growing.
    """
    height, width = size
    margin = 3.0 * line.radius_px
    area_px = (height + 2 * margin) * (width + 2 * margin)
    n0 = max(1, round(batch.seeding_per_mm2 * area_px * (UM_PER_PX * 1e-3) ** 2))
    capacity = max(int(1.15 * area_px / (math.pi * line.radius_px**2)), int(1.3 * n0) + 2)
    birth = _logistic_births(n0, capacity, line.doubling_h)
    n = birth.size
    # Seeded cells clump as often as clustering squared, later ones join a colony as often as
    # clustering: colony-forming lines start from clumps and grow compact colonies.
    near = rng.random(n) < np.where(np.arange(n) < n0, line.clustering**2, line.clustering)
    x, y = _colonies(
        rng.uniform(-margin, width + margin, n),
        rng.uniform(-margin, height + margin, n),
        near,
        parent_u=rng.random(n),
        angle=rng.uniform(-math.pi, math.pi, n),
        reach=rng.uniform(0.85, 1.15, n),
        spacing=line.radius_px,
        bounds=(-margin, width + margin, -margin, height + margin),
    )
    k = rng.normal(0.0, 2.0 * math.pi / 500.0, (3, 2))  # a smooth orientation field
    phase = rng.uniform(0.0, 2.0 * math.pi, 3)
    field = np.sin(np.outer(x, k[:, 0]) + np.outer(y, k[:, 1]) + phase).sum(1) * (math.pi / 2)
    jitter = rng.uniform(-math.pi / 2, math.pi / 2, n) * (1.0 - line.alignment)
    return _Population(
        birth_h=birth,
        x=x,
        y=y,
        size=rng.lognormal(0.0, line.size_cv, n),
        elongation=1.0 + (line.elongation - 1.0) * rng.uniform(0.6, 1.4, n),
        theta=field + jitter,
        rounded=(rng.random(n) < line.round_fraction).astype(np.float64),
        wobble=rng.uniform(0.0, 2.0 * math.pi, (n, 2)),
        margin=margin,
    )


def _uniform_noise(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Zero-mean unit-variance uniform noise (float32; three times cheaper than normal)."""
    noise = rng.random(size, dtype=np.float32)
    noise -= 0.5
    noise *= math.sqrt(12.0)
    return noise


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], scale: int) -> np.ndarray:
    """Unit-variance noise smooth over ``scale`` pixels: coarse, repeated, box-filtered (linear)."""
    height, width = size
    coarse = _uniform_noise(rng, (height // scale + 2, width // scale + 2))
    fine = np.repeat(np.repeat(coarse, scale, axis=0), scale, axis=1)[:height, :width]
    fine = ndi.uniform_filter(fine, scale)
    fine /= max(float(fine[::8, ::8].std()), 1e-6)
    return fine


@dataclass(frozen=True, slots=True)
class _Cells:
    """Per-cell float32 shape and shading of the cells alive at one time point."""

    x: np.ndarray
    y: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    segment: np.ndarray  # half-length of the capsule's axis, a - b
    b: np.ndarray  # half-width
    rc: np.ndarray  # radius of the lens's two circles
    rounded: np.ndarray  # 1 rounded, 0 spread
    halo: np.ndarray  # peak halo brightness
    ruffle: np.ndarray  # outline irregularity (px)
    nucleus: np.ndarray  # 1 / nucleus radius squared


def _alive_cells(line: LineStyle, pop: _Population, t_hours: float) -> _Cells:
    """Shapes at ``t_hours``: seeded cells attach and spread over ``line.spread_h``, daughters
    spread within about 1.5 h of their division."""
    alive = np.flatnonzero(pop.birth_h <= t_hours)
    age = t_hours - pop.birth_h[alive]
    settling = np.where(pop.birth_h[alive] > 0, _DAUGHTER_SPREAD_H, line.spread_h)
    rounded = np.maximum(pop.rounded[alive], np.exp(-age / settling))
    spread = 1.0 - rounded
    round_radius = 3.0 + 0.4 * line.radius_px  # a sphere of 15-20 um: r of 8-10 px
    radius = pop.size[alive] * (round_radius * rounded + line.radius_px * spread)
    elong = 1.0 + (pop.elongation[alive] - 1.0) * spread
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    drift = 0.3 * line.radius_px * (1.0 - 0.5 * line.clustering)
    w = pop.wobble[alive]
    theta = pop.theta[alive] + 0.2 * np.sin(t_hours / 13.0 + w[:, 0])
    nucleus = max(line.nucleus, 0.05) * b
    f32 = np.float32
    return _Cells(
        x=(pop.x[alive] + drift * np.sin(t_hours / 9.0 + w[:, 0])).astype(f32),
        y=(pop.y[alive] + drift * np.sin(t_hours / 11.0 + w[:, 1])).astype(f32),
        cos=np.cos(theta).astype(f32),
        sin=np.sin(theta).astype(f32),
        segment=(a - b).astype(f32),
        b=b.astype(f32),
        rc=((a * a + b * b) / (2.0 * b)).astype(f32),
        rounded=rounded.astype(f32),
        halo=(line.rim + rounded * (190.0 - line.rim)).astype(f32),
        ruffle=(line.ruffle * spread * b).astype(f32),
        nucleus=(1.0 / nucleus**2).astype(f32),
    )


@dataclass(frozen=True, slots=True)
class _Seeds:
    """Three seeds per cell (its centre and two points half-way to its tips), so that long cells
    claim their whole length, and the nearest seed of every half-resolution pixel.
    """

    x: np.ndarray  # float32 seed position
    y: np.ndarray
    owner: np.ndarray  # cell index of each seed
    half: np.ndarray  # nearest seed of each half-resolution pixel, flattened
    rows: np.ndarray  # flat offset of the half-resolution row of each image row
    cols: np.ndarray  # half-resolution column of each image column
    rows_across: np.ndarray  # the same for the neighbouring half-resolution row (above or below)
    cols_across: np.ndarray  # the neighbouring half-resolution column (left or right)


def _nearest_seeds(cells: _Cells, size: tuple[int, int], margin: float) -> _Seeds:
    """Seeds and their nearest-seed map; cells in the margin outside the image take part too.

    The Euclidean distance transform runs at half resolution (4x faster); ``_settle`` then
    decides every pixel between its own and a neighbour's seed exactly, so outlines are smooth.
    """
    height, width = size
    pad = int(margin) + 2
    grid = ((height + 2 * pad) // 2 + 2, (width + 2 * pad) // 2 + 2)
    reach = np.array([0.0, 0.5, -0.5], dtype=np.float32)[:, None] * (cells.segment + cells.b)
    x = (cells.x + reach * cells.cos).ravel()
    y = (cells.y + reach * cells.sin).ravel()
    gx = np.floor((x + pad) / 2).astype(np.intp)
    gy = np.floor((y + pad) / 2).astype(np.intp)
    seeds = np.flatnonzero((gx >= 0) & (gx < grid[1]) & (gy >= 0) & (gy < grid[0]))
    index = np.zeros(grid, dtype=np.intp)
    index[gy[seeds[::-1]], gx[seeds[::-1]]] = seeds[::-1]  # centres win on shared pixels
    empty = np.ones(grid, dtype=bool)
    empty[gy[seeds], gx[seeds]] = False
    _, (iy, ix) = ndi.distance_transform_edt(empty, return_indices=True)
    rows, cols = np.arange(height) + pad, np.arange(width) + pad
    return _Seeds(
        x=x,
        y=y,
        owner=np.tile(np.arange(cells.x.size), 3),
        half=index[iy, ix].ravel(),
        rows=rows // 2 * grid[1],
        cols=cols // 2,
        rows_across=np.where(rows % 2, rows // 2 + 1, rows // 2 - 1) * grid[1],
        cols_across=np.where(cols % 2, cols // 2 + 1, cols // 2 - 1),
    )


def _settle(seeds: _Seeds, band: slice) -> tuple[np.ndarray, np.ndarray]:
    """Exact owner cell of each pixel of a band of rows, and the cell-cell junction line there.

    A pixel's seed from the half-resolution transform is compared with the seed of the
    horizontal (else the vertical) half-resolution neighbour when that belongs to another cell:
    the signed distance to the bisector of the two seeds decides the owner and draws a sharp
    junction line along the bisector.
    """
    rows, cols = seeds.rows[band, None], seeds.cols[None, :]
    own = np.take(seeds.half, rows + cols)  # take with flat indices: twice as fast as [rows, cols]
    own_cell = seeds.owner[own]
    other = np.take(seeds.half, rows + seeds.cols_across[None, :])
    vertical = np.take(seeds.half, seeds.rows_across[band, None] + cols)
    other = np.where(seeds.owner[other] != own_cell, other, vertical)
    cell = seeds.owner[other]
    x1, y1, x2, y2 = seeds.x[own], seeds.y[own], seeds.x[other], seeds.y[other]
    nx, ny = x2 - x1, y2 - y1
    px = np.arange(cols.size, dtype=np.float32)[None, :]
    py = np.arange(band.start, band.start + own.shape[0], dtype=np.float32)[:, None]
    # > 0 when the pixel is nearer the other seed than its own
    toward = ((px - 0.5 * (x1 + x2)) * nx + (py - 0.5 * (y1 + y2)) * ny) / np.sqrt(
        nx * nx + ny * ny + 1e-6
    )
    toward[cell == own_cell] = -np.inf
    label = np.where(toward > 0, cell, own_cell)
    return label, np.exp(-((toward / 0.7) ** 2))


def _shade(
    line: LineStyle,
    cells: _Cells,
    seeds: _Seeds,
    band: slice,
    grains: np.ndarray,
    ruffle: np.ndarray,
) -> np.ndarray:
    """Cell signal of a band of rows (bands keep the per-pixel temporaries in cache).

    s is the signed distance to the outline of the pixel's cell: a capsule (segment of
    half-length a - b thickened by b) for blunt cells, a lens (two circles of radius rc) for
    pointed ones, blended by ``line.pointiness``, plus the ruffle noise.
    """
    width = grains.shape[1]
    label, junction = _settle(seeds, band)
    dx = np.arange(width, dtype=np.float32)[None, :] - cells.x[label]
    dy = np.arange(band.start, band.start + label.shape[0], dtype=np.float32)[:, None]
    dy = dy - cells.y[label]
    ct, st = cells.cos[label], cells.sin[label]
    u = np.abs(dx * ct + dy * st)
    v = np.abs(dy * ct - dx * st)
    b = cells.b[label]
    s = ruffle * cells.ruffle[label]
    if line.pointiness < 1.0:
        along = np.maximum(u - cells.segment[label], 0.0)
        s += (1.0 - line.pointiness) * (np.sqrt(along * along + v * v) - b)
    if line.pointiness > 0.0:
        rc = cells.rc[label]
        off = v + rc - b
        s += line.pointiness * (np.sqrt(u * u + off * off) - rc)
    rnd = cells.rounded[label]
    inside = 0.5 - 0.5 * np.tanh(s)
    depth = np.clip(s / (-0.5 * b), 0.0, 1.0)  # 0 at the outline, 1 in the thick middle
    specks = np.maximum(grains - 0.8, 0.0) - 0.7 * np.maximum(-1.2 - grains, 0.0)
    texture = (line.texture + 10.0 * rnd) * (0.5 * grains + 1.5 * specks)
    body = (1.0 - rnd) * line.body - 45.0 * rnd - depth * texture
    if line.nucleus > 0.05:
        q = (u * u + v * v) * cells.nucleus[label]
        body += (1.0 - rnd) * (8.0 * np.exp(-4.0 * (q - 1.0) ** 2) - 14.0 * np.exp(-q * q))
    width_halo = 0.9 + 0.6 * rnd  # rounded cells are thicker: a wider, brighter halo
    halo = cells.halo[label] * (0.75 + 0.25 * ruffle) * np.exp(-(((s - 0.8) / width_halo) ** 2))
    dark_edge = (14.0 + 60.0 * rnd) * np.exp(-(((s + 1.0) / 0.8) ** 2))
    return inside * (body + line.rim * junction) + halo - dark_edge


def _cells(
    line: LineStyle,
    pop: _Population,
    t_hours: float,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Cell signal: grey levels relative to the background, before the batch's contrast.

    Inside a cell, the cytoplasm offset with granules and a nucleus; across the outline a dark
    inner edge and the bright phase halo; bright lines where two cells touch. Rounded cells are
    smaller and darker, with a strong halo (like freshly seeded or mitotic cells).
    """
    height, _ = size
    cells = _alive_cells(line, pop, t_hours)
    if cells.x.size == 0:
        return np.zeros(size, dtype=np.float32)
    seeds = _nearest_seeds(cells, size, pop.margin)
    grains = ndi.gaussian_filter(_uniform_noise(rng, size), line.grain_px, truncate=2.5)
    grains /= max(float(grains[::8, ::8].std()), 1e-6)
    ruffle = _smooth_noise(rng, size, 8)
    out = np.empty(size, dtype=np.float32)
    for r0 in range(0, height, _BAND_ROWS):
        band = slice(r0, min(r0 + _BAND_ROWS, height))
        out[band] = _shade(line, cells, seeds, band, grains[band], ruffle[band])
    return out


def _background(batch: BatchStyle, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Flat grey with faint horizontal streaks, slight vignetting and dark debris specks."""
    height, width = size
    streaks = ndi.uniform_filter1d(_uniform_noise(rng, size), 15, axis=1)
    bg = streaks * (1.5 / max(float(streaks[::8, ::8].std()), 1e-6)) + batch.brightness
    yy = (np.arange(height, dtype=np.float32)[:, None] / height - 0.5) ** 2
    xx = (np.arange(width, dtype=np.float32)[None, :] / width - 0.5) ** 2
    bg -= batch.vignetting * 2.0 * (yy + xx)
    n_specks = int(rng.integers(200, 600))
    where = rng.integers(0, height, n_specks), rng.integers(0, width, n_specks)
    bg[where] -= rng.uniform(20.0, 80.0, n_specks).astype(np.float32)
    return bg


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (the same on every machine, so images are reproducible)."""
    return ImageFont.load_default(size=size)


def time_stamp_text(elapsed_minutes: int) -> str:
    """The time-stamp box text of real exports: ``3d 20h 14m`` (no zero padding)."""
    hours, minutes = divmod(elapsed_minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m"


def draw_overlays(image: np.ndarray, elapsed_minutes: int) -> np.ndarray:
    """Burn in the overlays of a real export: scale bar bottom-left, time-stamp box bottom-right.

    Geometry measured on real 1408 x 1040 exports. Pillow's bundled font has no ``µ`` or ``²``:
    ``µ`` is a ``u`` with a descender, ``²`` a raised small ``2``.
    """
    height, width = image.shape
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    ink = {"fill": _BAR_COLOUR, "stroke_width": 1, "stroke_fill": _BAR_COLOUR}
    bar_y = height - _BAR_BOTTOM
    middle = (_BAR_X0 + _BAR_X1) // 2
    draw.rectangle((_BAR_X0, bar_y, _BAR_X1, bar_y + 2), fill=_BAR_COLOUR)
    for x in (_BAR_X0, middle, _BAR_X1):
        draw.rectangle((x - 1, bar_y - 8, x + 1, bar_y), fill=_BAR_COLOUR)
    baseline = bar_y - 16
    draw.text((_BAR_X0, baseline), "0", font=_font(18), anchor="ms", **ink)
    draw.text((_BAR_X1, baseline), "400", font=_font(18), anchor="ms", **ink)
    left = draw.textbbox((middle, baseline), "um", font=_font(18), anchor="ms")[0]
    draw.text((middle, baseline), "um", font=_font(18), anchor="ms", **ink)
    draw.rectangle((left, baseline - 2, left + 1, baseline + 3), fill=_BAR_COLOUR)
    mm = UM_PER_PX / 1000
    field = f"{width * mm:.2f} x {height * mm:.2f} mm, {width * height * mm * mm:.2f} mm"
    draw.text((_BAR_X0, bar_y + 14), field, font=_font(17), anchor="lt", **ink)
    right = draw.textbbox((_BAR_X0, bar_y + 14), field, font=_font(17), anchor="lt")[2]
    draw.text((right + 2, bar_y + 11), "2", font=_font(11), anchor="lt", **ink)
    box = (width - _BOX_LEFT, height - _BOX_TOP, width - _BOX_RIGHT, height - _BOX_BOTTOM)
    draw.rectangle(box, fill=0)
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + 1)
    draw.text(centre, time_stamp_text(elapsed_minutes), fill=255, font=_font(23), anchor="mm")
    return np.asarray(canvas).copy()


def render_image(
    line: LineStyle,
    batch: BatchStyle,
    t_hours: float,
    rng: np.random.Generator,
    size: tuple[int, int] = IMAGE_SIZE,
    overlays: bool = True,
) -> np.ndarray:
    """One grey uint8 (height, width) image of a field of ``line`` at ``t_hours`` after seeding.

    The field's cells are the first draws from ``rng``: pass a generator seeded the same way for
    every time point of one position and the time-lapse shows the same field growing. Per-frame
    randomness (noise, texture) comes from a generator derived from ``rng`` and the time.
    """
    if t_hours < 0:
        raise ValueError(f"t_hours must be >= 0, got {t_hours}")
    pop = _population(line, batch, size, rng)
    frame = np.random.default_rng([int(rng.integers(2**62)), round(t_hours * 60)])
    image = _background(batch, size, frame)
    image += batch.contrast * _cells(line, pop, t_hours, size, frame)
    image = ndi.gaussian_filter(image, batch.blur_px, truncate=3.0)
    image += _uniform_noise(frame, size) * batch.noise
    grey = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return draw_overlays(grey, round(t_hours * 60)) if overlays else grey


def position_names(batch: BatchStyle, position: int, timepoints: int) -> tuple[ImageName, ...]:
    """File-name fields of the time series of one position (0-based) of a batch.

    A batch with one well puts its positions at locations 1, 2, ... of that well; a batch with
    one well per position puts each at location 1 of its own well.
    """
    one_well = len(batch.wells) == 1
    well = batch.wells[0 if one_well else position]
    location = position + 1 if one_well else 1
    return tuple(
        ImageName(batch.prefix, well, location, "jpg", elapsed_minutes=minutes)
        for minutes in batch.elapsed_minutes(timepoints)
    )


@dataclass(frozen=True, slots=True)
class SynthResult:
    """What ``synth_export`` wrote: the root, the styles used, every file in writing order."""

    root: Path
    lines: tuple[LineStyle, ...]
    batches: Mapping[str, tuple[BatchStyle, ...]]
    """Cell line folder name -> its batches."""
    paths: tuple[Path, ...]
    n_sequences: int

    @property
    def n_images(self) -> int:
        """Number of files written."""
        return len(self.paths)


def synth_export(
    out: Path,
    lines: int = 4,
    batches: int = 2,
    positions: int = 2,
    timepoints: int = 4,
    seed: int = 0,
    on_image: Callable[[Path], None] | None = None,
    batch_effects: float = 1.0,
    size: tuple[int, int] = IMAGE_SIZE,
) -> SynthResult:
    """Write a synthetic export tree ``out/<cell_line>/<batch>/<files>``.

    Files are 1408 x 1040 JPEGs (quality 90, three equal channels, 96 dpi) named
    ``<prefix>_<well>_<location>_<DDdHHhMMm>.jpg``. Same arguments, byte-identical files; a
    (line, batch, position) renders the same whatever the counts. ``on_image(path)`` is called
    after each file is written. ``out`` must not exist or must be an empty directory.
    ``batch_effects`` scales the batch effects (`batch_style`); ``size`` (height, width): smaller
    frames for fast tests (the overlays keep their real geometry from the bottom corners).
    """
    _check_count("lines", lines, 1000)
    _check_count("batches", batches, 100)
    _check_count("positions", positions, MAX_POSITIONS)
    _check_count("timepoints", timepoints, 10000)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty directory")
    styles = line_styles(lines, seed)
    by_line = {
        line.name: tuple(
            batch_style(line, li, bi, positions, seed, batch_effects) for bi in range(batches)
        )
        for li, line in enumerate(styles)
    }
    written: list[Path] = []
    for li, line in enumerate(styles):
        for bi, batch in enumerate(by_line[line.name]):
            folder = out / line.name / batch.name
            folder.mkdir(parents=True, exist_ok=True)
            minutes = batch.elapsed_minutes(timepoints)
            for p in range(positions):
                names = position_names(batch, p, timepoints)
                for name, elapsed in zip(names, minutes, strict=True):
                    rng = np.random.default_rng([seed, 13, li, bi, p])  # same field every time
                    grey = render_image(line, batch, elapsed / 60.0, rng, size)
                    path = folder / format_name(name)
                    rgb = Image.fromarray(grey).convert("RGB")
                    rgb.save(path, quality=JPEG_QUALITY, dpi=(96, 96))
                    written.append(path)
                    if on_image is not None:
                        on_image(path)
    return SynthResult(
        root=out,
        lines=styles,
        batches=by_line,
        paths=tuple(written),
        n_sequences=lines * batches * positions,
    )
