"""Cell Cluster-level Selection (CCS): the 112 x 112 patches of one image (SPEC section 3).

Rules, in order (paper Eq. 1-4 and Algorithm 1):

Parameters (`params.CCSParams`): ``max_regions`` (40), ``tile_factor`` (2), ``tie_break``.

1. label the mask's 8-connected regions; keep the ``max_regions`` largest (ties: lower label,
   i.e. first in raster order); take each bounding box;
2. **MassCenter**: each region gives a ``size`` x ``size`` box centred on the centre of mass of
   the mask inside the region's bounding box, ``floor(centre - size / 2)``, clamped in the image;
3. **tiles**: a region whose bounding box holds at least ``tile_factor * size**2`` mask pixels is
   also covered by a grid of ``ceil(height / size) x ceil(width / size)`` tiles anchored at the
   box's top-left corner, each clamped inside the image;
4. for every pair of overlapping boxes, ``u = sum(min(grey_a, grey_b)) + sum(min(lbp_a, lbp_b))
   + IoU(a, b)``: 25-bin histograms of the uint8 grey values over 0..255 and 10-bin histograms of
   the LBP codes (P = 8, R = 1) over 0..255, both divided by the box's pixel count;
5. for each overlapping pair in creation order (region boxes by label, then tiles region by region,
   row-major) whose ``u`` is at or above the mean ``u`` of all pairs (within ``MEAN_TOLERANCE``,
   so that rounding never splits equal values), delete the box of lower density (mean of the
   mask inside the box; the later box on equal density) unless one of the pair is already
   deleted;
6. rank the rest by density, descending, and keep the first ``k``.

Density ties are broken farthest-first (``tie_break``), boxes on burned-in overlays move up or
down their column; why, and the deliberate differences from the reference: docs/method.md,
"Cell Cluster-level Selection".
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from clanet_store.imaging.jit import kernel
from clanet_store.imaging.params import FIXED, CCSParams
from clanet_store.imaging.runlength import components

PATCH_SIZE = 112
K_STORED = 20
MEAN_TOLERANCE = 1e-9

BOX_DTYPE = np.dtype(
    [
        ("x", np.int32),
        ("y", np.int32),
        ("w", np.int32),
        ("h", np.int32),
        ("density", np.float32),
        ("rank", np.int16),
    ]
)

# LBP sample points of skimage (P = 8, R = 1), bit i at angle 2 pi i / 8: (row, column) offsets.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
# skimage samples the diagonal points at +-0.70711 (rounded to 5 decimals): in the unit square
# towards the diagonal neighbour, the centre weighs 0.29289^2, the two edge neighbours
# 0.29289 * 0.70711 each and the corner 0.70711^2. "sample >= centre" is then exactly
# 29289 * (edge1 + edge2 - 2 centre) + 70711 * (corner - centre) >= 0, that is
# edge1 + edge2 - 2 centre >= _EDGE_MIN[corner - centre + 255].
_EDGE_MIN = (-((70711 * np.arange(-255, 256)) // 29289)).astype(np.int16)


def _bin_starts(bins: int) -> np.ndarray:
    """First value of each bin of ``np.histogram(values, bins, range=(0, 255))`` over 0..255.

    The bins are runs of consecutive values, so a histogram is the 256-value count summed over
    these runs (``np.add.reduceat``).
    """
    edges = np.linspace(0.0, 255.0, bins + 1)
    bin_of_value = np.digitize(np.arange(256), edges[1:-1])
    return np.searchsorted(bin_of_value, np.arange(bins))


# The histograms' bins and the LBP's P / R are compiled in (`params.FixedParams`).
_GREY_STARTS = _bin_starts(FIXED.grey_bins)
_LBP_STARTS = _bin_starts(FIXED.lbp_bins)


def local_binary_pattern(grey: np.ndarray) -> np.ndarray:
    """LBP codes (P = 8, R = 1, skimage's 'default' method) of a uint8 image, as uint8.

    Pixels outside the image count as 0, like skimage's ``cval``. skimage compares the bilinear
    sample with the centre in floating point; here the comparison is exact, so the two can differ
    only where a diagonal sample equals the centre exactly (then it counts as ``>=``, bit set).
    """
    return _lbp_codes(np.pad(grey, 1))


def _lbp_codes(padded: np.ndarray) -> np.ndarray:
    """LBP codes of the interior of ``padded`` (..., h + 2, w + 2) -> (..., h, w) uint8."""
    stack = np.ascontiguousarray(padded, np.uint8).reshape(-1, *padded.shape[-2:])
    return _lbp_kernel(stack).reshape(*padded.shape[:-2], *(n - 2 for n in padded.shape[-2:]))


@kernel()
def _lbp_kernel(padded: np.ndarray) -> np.ndarray:
    """``_lbp_codes`` of a stack (n, h + 2, w + 2), compiled: integers only, so exact.

    Axial neighbours count when ``>=`` the centre; a diagonal one when ``edge1 + edge2 - 2 centre
    >= _EDGE_MIN[corner - centre + 255]``.
    """
    n, h, w = padded.shape[0], padded.shape[1] - 2, padded.shape[2] - 2
    codes = np.empty((n, h, w), np.uint8)
    for i in range(n):
        p = padded[i]
        for y in range(1, h + 1):
            for x in range(1, w + 1):
                centre = np.int32(p[y, x])
                code = 0
                for bit in range(8):
                    dy, dx = _NEIGHBOURS[bit]
                    if dy == 0 or dx == 0:
                        on = np.int32(p[y + dy, x + dx]) >= centre
                    else:
                        edges = np.int32(p[y, x + dx]) + np.int32(p[y + dy, x]) - 2 * centre
                        on = edges >= _EDGE_MIN[np.int32(p[y + dy, x + dx]) - centre + 255]
                    code |= np.int32(on) << bit
                codes[i, y - 1, x - 1] = code
    return codes


def select_patches(
    grey: np.ndarray,
    mask: np.ndarray,
    k: int = K_STORED,
    size: int = PATCH_SIZE,
    exclude: np.ndarray | None = None,
    *,
    params: CCSParams | None = None,
) -> np.ndarray:
    """The top ``k`` CCS boxes of an image: structured array (x, y, w, h, density, rank).

    ``params``: the method's numbers (default `CCSParams()`).
    """
    params = params or CCSParams()
    if grey.shape != mask.shape or (exclude is not None and exclude.shape != mask.shape):
        raise ValueError("grey, mask and exclude must have the same shape")
    h, w = mask.shape
    if h < size or w < size or k <= 0:
        return np.zeros(0, BOX_DTYPE)
    if exclude is not None and exclude.any():
        mask = mask & ~exclude
    else:
        exclude = None
    ys, xs = candidate_boxes(mask, size, params.max_regions, params.tile_factor)
    if exclude is not None:
        ys, xs = avoid_excluded(ys, xs, exclude, size)
    if ys.size == 0:
        return np.zeros(0, BOX_DTYPE)
    counts = np.array(
        [np.count_nonzero(mask[y : y + size, x : x + size]) for y, x in zip(ys, xs, strict=True)]
    )
    first, second = overlapping_pairs(ys, xs, size)
    u = similarity(grey, ys, xs, first, second, size)
    deleted = removal(first, second, u, counts)
    keep = np.flatnonzero(~deleted)
    ys, xs, counts = ys[keep], xs[keep], counts[keep]
    if params.tie_break == "creation-order":
        order = np.argsort(-counts, kind="stable")[:k]
    else:
        order = rank(ys, xs, counts, _texture(grey, ys, xs, counts, size), k)
    out = np.zeros(order.size, BOX_DTYPE)
    out["x"], out["y"], out["w"], out["h"] = xs[order], ys[order], size, size
    out["density"] = counts[order] / (size * size)
    out["rank"] = np.arange(order.size)
    return out


def candidate_boxes(
    mask: np.ndarray,
    size: int,
    max_regions: int = CCSParams.max_regions,
    tile_factor: float = CCSParams.tile_factor,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (ys, xs) of the MassCenter boxes and tiles, in creation order.

    Regions are found on the runs of the mask (``runlength.components``), numbered in raster
    order of their first pixel like ``ndi.label``'s labels; areas and bounding boxes come from the
    runs.
    """
    h, w = mask.shape
    runs, region, count = components(mask, eight=True)
    if count == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    areas = np.bincount(region, weights=runs.length).astype(np.int64)
    kept = np.sort(np.argsort(-areas, kind="stable")[:max_regions])  # region number, by label
    starts, stops = runs.start, runs.stop
    top, bottom = np.full(count, h), np.zeros(count, np.intp)
    left, right = np.full(count, w), np.zeros(count, np.intp)
    np.minimum.at(top, region, runs.row)
    np.maximum.at(bottom, region, runs.row + 1)
    np.minimum.at(left, region, starts)
    np.maximum.at(right, region, stops)
    centre_ys, centre_xs, tile_ys, tile_xs = [], [], [], []
    for index in kept.tolist():
        rows, cols = slice(top[index], bottom[index]), slice(left[index], right[index])
        box = mask[rows, cols]
        per_row = np.count_nonzero(box, axis=1)
        per_col = np.count_nonzero(box, axis=0)
        total = int(per_row.sum())
        # floor(centre of mass - size / 2) in exact integer arithmetic
        sum_y = int(per_row @ np.arange(rows.start, rows.stop))
        sum_x = int(per_col @ np.arange(cols.start, cols.stop))
        centre_ys.append(min(max((2 * sum_y - size * total) // (2 * total), 0), h - size))
        centre_xs.append(min(max((2 * sum_x - size * total) // (2 * total), 0), w - size))
        if total >= tile_factor * size * size:
            grid_y = np.arange(rows.start, rows.stop, size).clip(0, h - size)
            grid_x = np.arange(cols.start, cols.stop, size).clip(0, w - size)
            tile_ys.extend(np.repeat(grid_y, grid_x.size))
            tile_xs.extend(np.tile(grid_x, grid_y.size))
    return np.array(centre_ys + tile_ys, np.intp), np.array(centre_xs + tile_xs, np.intp)


def avoid_excluded(
    ys: np.ndarray, xs: np.ndarray, exclude: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Move boxes touching excluded pixels to the nearest free row of their columns, or drop."""
    h = exclude.shape[0]
    bad_rows = np.flatnonzero(exclude.any(axis=1))
    spans = np.zeros((bad_rows.size, exclude.shape[1] + 1), np.int32)  # excluded px per row prefix
    np.cumsum(exclude[bad_rows], axis=1, out=spans[:, 1:])
    hits = spans[:, xs + size] - spans[:, xs] > 0  # (bad row, box): excluded in the box's columns
    rows_in = (bad_rows[:, None] >= ys) & (bad_rows[:, None] < ys + size)
    keep = np.ones(ys.size, bool)
    ys = ys.copy()
    for i in np.flatnonzero((hits & rows_in).any(axis=0)):
        blocked = np.zeros(h + 1, np.int32)
        blocked[1:][bad_rows[hits[:, i]]] = 1
        np.cumsum(blocked, out=blocked)
        free = np.flatnonzero(blocked[size:] == blocked[: h + 1 - size])  # tops of free boxes
        if free.size:
            ys[i] = free[np.argmin(np.abs(free - ys[i]))]
        else:
            keep[i] = False
    return ys[keep], xs[keep]


def overlapping_pairs(ys: np.ndarray, xs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j, in lexicographic order) of boxes that share at least one pixel."""
    near = (np.abs(ys[:, None] - ys[None, :]) < size) & (np.abs(xs[:, None] - xs[None, :]) < size)
    return np.nonzero(np.triu(near, 1))


def similarity(
    grey: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    size: int,
) -> np.ndarray:
    """Complementary similarity u of each pair (grey + LBP histogram intersections + IoU)."""
    if first.size == 0:
        return np.zeros(0)
    used = np.unique(np.concatenate([first, second]))
    grey_hist, lbp_hist = box_histograms(grey, ys[used], xs[used], size)
    slot = np.zeros(ys.size, np.intp)
    slot[used] = np.arange(used.size)
    a, b = slot[first], slot[second]
    shared = np.minimum(grey_hist[a], grey_hist[b]).sum(axis=1)
    shared += np.minimum(lbp_hist[a], lbp_hist[b]).sum(axis=1)
    overlap = (size - np.abs(ys[first] - ys[second])) * (size - np.abs(xs[first] - xs[second]))
    return shared / (size * size) + overlap / (2 * size * size - overlap)


def box_histograms(
    grey: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the 25-bin grey and 10-bin LBP histograms of each box: (n, 25), (n, 10).

    The LBP codes come from the whole image (the crops' border pixels see their real
    neighbours), computed crop by crop when the crops cover less than the image.
    """
    corners = list(zip(ys.tolist(), xs.tolist(), strict=True))
    if len(corners) * (size + 2) ** 2 < grey.size:
        padded = np.pad(grey, 1)
        crops = np.stack([padded[y : y + size + 2, x : x + size + 2] for y, x in corners])
        grey_crops, codes = crops[:, 1:-1, 1:-1], _lbp_codes(crops)
    else:
        whole = local_binary_pattern(grey)
        grey_crops = [grey[y : y + size, x : x + size] for y, x in corners]
        codes = [whole[y : y + size, x : x + size] for y, x in corners]
    return _binned_counts(grey_crops, _GREY_STARTS), _binned_counts(codes, _LBP_STARTS)


def _binned_counts(crops: Iterable[np.ndarray], starts: np.ndarray) -> np.ndarray:
    """Per-crop histogram counts of uint8 values over the bins beginning at ``starts``.

    One small ``bincount`` per crop (its 256-value count) costs less than binning every pixel
    through a lookup table and counting all crops at once with per-crop offsets.
    """
    counts = np.array([np.bincount(c.ravel(), minlength=256) for c in crops]).reshape(-1, 256)
    return np.add.reduceat(counts, starts, axis=1)


def removal(first: np.ndarray, second: np.ndarray, u: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Boxes deleted by the overlap filter (rule 5), as a boolean array over the boxes."""
    deleted = np.zeros(counts.size, bool)
    if u.size == 0:
        return deleted
    similar = u >= u.mean() - MEAN_TOLERANCE
    for i, j in zip(first[similar].tolist(), second[similar].tolist(), strict=True):
        if not (deleted[i] or deleted[j]):
            deleted[j if counts[i] >= counts[j] else i] = True
    return deleted


def _texture(
    grey: np.ndarray, ys: np.ndarray, xs: np.ndarray, counts: np.ndarray, size: int
) -> np.ndarray:
    """Grey-level variance x pixel count^2 (exact, integer) of each box that shares its density.

    Only those need the tie-break; the others get 0.
    """
    out = np.zeros(ys.size, np.int64)
    _, group, group_size = np.unique(counts, return_inverse=True, return_counts=True)
    for i in np.flatnonzero(group_size[group] > 1):
        values = grey[ys[i] : ys[i] + size, xs[i] : xs[i] + size].astype(np.int64)
        out[i] = values.size * np.sum(values * values) - np.sum(values) ** 2
    return out


def rank(
    ys: np.ndarray, xs: np.ndarray, counts: np.ndarray, texture: np.ndarray, k: int
) -> np.ndarray:
    """Indices of the first ``k`` boxes by density (``counts``), best first.

    Ties: farthest from the boxes ranked so far, then larger ``texture``, then lower index.
    """
    chosen: list[int] = []
    for level in np.unique(counts)[::-1]:
        group = np.flatnonzero(counts == level)
        while group.size and len(chosen) < k:
            if chosen:
                dy = ys[group][:, None] - ys[chosen][None, :]
                dx = xs[group][:, None] - xs[chosen][None, :]
                distance = (dy * dy + dx * dx).min(axis=1)
                far = np.flatnonzero(distance == distance.max())
            else:
                far = np.arange(group.size)
            pick = int(far[np.argmax(texture[group[far]])])
            chosen.append(int(group[pick]))
            group = np.delete(group, pick)
        if len(chosen) == k:
            break
    return np.array(chosen, np.intp)


def crop_patches(grey: np.ndarray, boxes: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """The pixels of each box, (n, size, size) uint8."""
    if np.any(boxes["w"] != size) or np.any(boxes["h"] != size):
        raise ValueError(f"every box must be {size} x {size}")
    out = np.empty((boxes.size, size, size), np.uint8)
    for i, (x, y) in enumerate(zip(boxes["x"].tolist(), boxes["y"].tolist(), strict=True)):
        out[i] = grey[y : y + size, x : x + size]
    return out
