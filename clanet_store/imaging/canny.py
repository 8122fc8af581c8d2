"""Canny edges compiled with numba, bit-identical to skimage's.

Sigma and the hysteresis thresholds are arguments (`params.MaskParams`: 1, 0.1 / 0.2), passed to
the kernels as the Gaussian's weights and two floats, never read from globals.
``skimage.feature.canny(image, sigma, low, high, mask=valid)`` is six passes over float64
arrays (two Gaussian passes, the bleed-over division, two Sobel filters, the magnitude), a Cython
non-maximum suppression and ``ndi.label`` for the hysteresis. Here one compiled pass smooths
the image row by row and a second computes the Sobel derivatives and the magnitude on three
rolling rows and suppresses non-maxima one row behind, then a flood fill does the hysteresis.

Every floating-point number is the one skimage computes, by the same operations in the same
order (``@njit`` without ``fastmath``: LLVM neither reassociates nor fuses multiply-adds):

* the Gaussian is scipy's ``correlate1d`` along axis 0, then axis 1, with its weights (computed
  by NumPy exactly as ``scipy.ndimage._filters._gaussian_kernel1d``) and its summation for
  symmetric kernels: ``x[0] * w[0]``, then ``+= (x[-k] + x[k]) * w[-k]`` for k = radius .. 1,
  zero outside the image and at invalid pixels;
* the division by the smoothed validity mask plus eps, whose value for an image without invalid
  pixels is cached per shape and sigma, and recomputed only in a band of rows around invalid pixels;
* scipy's Sobel ('reflect' borders): the derivative ``b - a`` (scipy's ``(a - b) * -1``, exact),
  then ``2 * c + (a + b)`` across the other axis; magnitude ``sqrt(i * i + j * j)``;
* skimage's suppression, with its low threshold as the C ``float`` it is passed as
  (``float32(low)``) and its interpolation ``n2 * w + n1 * (1 - w) <= m``;
* the hysteresis keeps the 8-connected components of the surviving pixels that hold one at or
  above the high threshold, as ``ndi.label`` with a 3 x 3 structure does in skimage.

The machine code is cached on disk (``jit.kernel``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from clanet_store.imaging.jit import kernel
from clanet_store.imaging.params import FIXED, MaskParams

EPS = float(np.finfo(np.float64).eps)
_DEFAULT = MaskParams()


@lru_cache(maxsize=8)
def gaussian_weights(sigma: float) -> np.ndarray:
    """The 1-D weights scipy's ``gaussian_filter`` correlates with (symmetric, sum 1), radius
    ``int(truncate * sigma + 0.5)``. Cached: never write to them."""
    radius = int(FIXED.gaussian_truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return (phi / phi.sum())[::-1].copy()


def canny(
    image: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    sigma: float = _DEFAULT.canny_sigma,
    low: float = _DEFAULT.canny_low,
    high: float = _DEFAULT.canny_high,
) -> np.ndarray:
    """``skimage.feature.canny(image, sigma, low, high, mask=valid)`` for a 2-D float64 image."""
    image = np.ascontiguousarray(image, dtype=np.float64)
    weights = gaussian_weights(float(sigma))
    cached = _bleed_over(image.shape, float(sigma))
    masked = valid is not None and not valid.all()
    if masked:
        valid = np.ascontiguousarray(valid, dtype=bool)
        band, first = _bleed_over_band(valid, weights)
    else:
        valid, band, first = np.ones(image.shape, bool), cached[:0], 0
    smoothed = _smooth(image, valid, weights, cached, band, first)
    # skimage passes the low threshold to its suppression as a C float: float32(low)
    return _edges(smoothed, valid, masked, float(np.float32(low)), float(high))


@lru_cache(maxsize=4)
def _bleed_over(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smoothed all-valid mask plus eps, as skimage's Canny divides by it.

    Kept writable (numba compiles read-only arrays as another type), but never written.
    """
    out = gaussian(np.ones(shape), np.ones(shape, bool), sigma)
    out += EPS
    return out


def gaussian(
    image: np.ndarray, valid: np.ndarray, sigma: float = _DEFAULT.canny_sigma
) -> np.ndarray:
    """``ndi.gaussian_filter(where(valid, image, 0), sigma, mode='constant', truncate=4)``,
    exact."""
    empty = np.zeros((0, image.shape[1]))
    return _smooth(image, valid, gaussian_weights(float(sigma)), empty, empty, image.shape[0])


def _bleed_over_band(valid: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, int]:
    """Smoothed validity mask plus eps in the rows where it differs from the cached one.

    The Gaussian runs along axis 0 first, so a row depends only on the rows within the radius:
    a band recomputed with a margin of twice the radius is exact in all but its margin rows.
    Returns the band and its first row.
    """
    h, radius = valid.shape[0], weights.size // 2
    bad_rows = np.flatnonzero(~valid.all(axis=1))
    top, bottom = max(bad_rows[0] - 2 * radius, 0), min(bad_rows[-1] + 2 * radius + 1, h)
    ones = np.ones((bottom - top, valid.shape[1]))
    empty = np.zeros((0, valid.shape[1]))
    band = _smooth(ones, valid[top:bottom], weights, empty, empty, bottom - top)
    band += EPS
    first = top + radius if top > 0 else 0
    last = bottom - radius if bottom < h else h
    return band[first - top : last - top], first


@kernel(error_model="numpy")
def _smooth(
    image: np.ndarray,
    valid: np.ndarray,
    weights: np.ndarray,
    cached: np.ndarray,
    band: np.ndarray,
    first: int,
) -> np.ndarray:
    """Gaussian of the valid pixels, row r then divided by band[r - first] or else cached[r].

    ``weights``: the 2 radius + 1 Gaussian weights. The 2 radius + 1 rows around the current one
    are kept, zero where invalid or outside the image, in a ring buffer; rows outside both
    divisors (an empty ``cached``) stay undivided.
    """
    h, w = image.shape
    radius = weights.size // 2
    size = 2 * radius + 1
    ring = np.zeros((size, w))
    for r in range(min(radius, h)):
        _masked_row(image, valid, r, ring[r])
    line = np.zeros(w + 2 * radius)  # the vertical pass of one row, zero-padded left and right
    out = np.empty((h, w))
    for r in range(h):
        ahead = ring[(r + radius) % size]
        if r + radius < h:
            _masked_row(image, valid, r + radius, ahead)
        else:
            ahead[:] = 0.0
        for c in range(w):
            acc = ring[r % size, c] * weights[radius]
            for k in range(radius, 0, -1):
                acc += (ring[(r - k) % size, c] + ring[(r + k) % size, c]) * weights[radius - k]
            line[radius + c] = acc
        row = out[r]
        for c in range(w):
            acc = line[radius + c] * weights[radius]
            for k in range(radius, 0, -1):
                acc += (line[radius + c - k] + line[radius + c + k]) * weights[radius - k]
            row[c] = acc
        if first <= r < first + band.shape[0]:
            _divide(row, band[r - first])
        elif r < cached.shape[0]:
            _divide(row, cached[r])
    return out


@kernel()
def _masked_row(image: np.ndarray, valid: np.ndarray, r: int, out: np.ndarray) -> None:
    """Row r of ``where(valid, image, 0)``."""
    for c in range(image.shape[1]):
        value = image[r, c]  # loaded unconditionally: a select, not a branch
        out[c] = value if valid[r, c] else 0.0


@kernel(error_model="numpy")
def _divide(row: np.ndarray, divisor: np.ndarray) -> None:
    """``row /= divisor`` (``error_model='numpy'``: no zero check, so the loop vectorises)."""
    for c in range(row.size):
        row[c] /= divisor[c]


@kernel()
def _sobel_row(s: np.ndarray, r: int, isobel: np.ndarray, jsobel: np.ndarray) -> None:
    """Row r of scipy's Sobel derivatives along axis 0 and axis 1, 'reflect' borders."""
    h, w = s.shape
    up, mid, down = s[max(r - 1, 0)], s[r], s[min(r + 1, h - 1)]
    for c in range(w):
        isobel[c] = down[c] - up[c]  # the derivative across rows, smoothed below
    for c in range(1, w - 1):
        jsobel[c] = 2.0 * (mid[c + 1] - mid[c - 1]) + (
            (up[c + 1] - up[c - 1]) + (down[c + 1] - down[c - 1])
        )
    last = w - 1
    for c in (0, last):
        left, right = max(c - 1, 0), min(c + 1, last)
        jsobel[c] = 2.0 * (mid[right] - mid[left]) + (
            (up[right] - up[left]) + (down[right] - down[left])
        )
    d_first, d_last = isobel[0], isobel[last]
    previous = d_first
    for c in range(w - 1):
        d = isobel[c]
        isobel[c] = 2.0 * d + (previous + isobel[c + 1])
        previous = d
    isobel[last] = 2.0 * d_last + (previous + d_last)


@kernel(error_model="numpy")
def _edges(s: np.ndarray, valid: np.ndarray, masked: bool, low: float, high: float) -> np.ndarray:
    """Non-maximum suppression and hysteresis on the smoothed image ``s``."""
    h, w = s.shape
    isobel = np.empty((3, w))
    jsobel = np.empty((3, w))
    mag = np.empty((3, w))
    state = np.zeros((h, w), np.uint8)  # 1: survives the suppression, 2: and is strong
    for r in range(min(h, 2)):
        _gradient_row(s, r, isobel[r], jsobel[r], mag[r])
    for r in range(1, h - 1):
        _gradient_row(s, r + 1, isobel[(r + 1) % 3], jsobel[(r + 1) % 3], mag[(r + 1) % 3])
        above, here, below = mag[(r - 1) % 3], mag[r % 3], mag[(r + 1) % 3]
        ii, jj = isobel[r % 3], jsobel[r % 3]
        out = state[r]
        for c in range(1, w - 1):
            m, gi, gj = here[c], ii[c], jj[c]
            # every neighbour loaded, then chosen by selects: no branch to mispredict
            up, up_left, up_right = above[c], above[c - 1], above[c + 1]
            down, down_left, down_right = below[c], below[c - 1], below[c + 1]
            left, right = here[c - 1], here[c + 1]
            ai, aj = abs(gi), abs(gj)
            same = (gi <= 0) == (gj <= 0)  # both gradients positive, or both not
            across = ai > aj if same else ai >= aj  # the normal is nearer axis 0 than axis 1
            wt = (aj if across else ai) / (ai if across else aj)
            n11 = (down if same else up) if across else right
            n21 = (up if same else down) if across else left
            n12 = down_right if same else up_right
            n22 = up_left if same else down_left
            keep = (
                (m >= low) & (n12 * wt + n11 * (1.0 - wt) <= m) & (n22 * wt + n21 * (1.0 - wt) <= m)
            )
            out[c] = keep * (1 + (m >= high))
        if masked:
            for c in range(1, w - 1):
                if out[c] and not _inner(valid, r, c):
                    out[c] = 0
    return _hysteresis(state)


@kernel()
def _gradient_row(
    s: np.ndarray, r: int, isobel: np.ndarray, jsobel: np.ndarray, mag: np.ndarray
) -> None:
    """Row r of the Sobel derivatives and of the magnitude ``sqrt(i * i + j * j)``."""
    _sobel_row(s, r, isobel, jsobel)
    for c in range(s.shape[1]):
        mag[c] = np.sqrt(isobel[c] * isobel[c] + jsobel[c] * jsobel[c])


@kernel()
def _hysteresis(state: np.ndarray) -> np.ndarray:
    """Pixels 8-connected, through state > 0, to a pixel of state 2 (none on the border).

    Strong pixels are edges; a weak one (state 1) is an edge when a path of weak pixels joins it
    to a strong one, so a fill through weak pixels only, started from those next to a strong
    pixel, finds them all. Edges are mostly strong: the fill visits a few per cent of the image.
    """
    h, w = state.shape
    edges = np.empty((h, w), np.bool_)
    weak = 0
    for r in range(h):
        for c in range(w):
            edges[r, c] = state[r, c] == 2
            weak += state[r, c] == 1
    stack = np.empty(weak, np.int64)
    for r in range(1, h - 1):
        for c in range(1, w - 1):
            if state[r, c] != 1 or edges[r, c] or not _next_to_strong(state, r, c):
                continue
            edges[r, c] = True
            stack[0] = r * w + c
            top = 1
            while top:
                top -= 1
                y0, x0 = divmod(stack[top], w)
                for y in range(y0 - 1, y0 + 2):
                    for x in range(x0 - 1, x0 + 2):
                        if state[y, x] == 1 and not edges[y, x]:
                            edges[y, x] = True
                            stack[top] = y * w + x
                            top += 1
    return edges


@kernel()
def _next_to_strong(state: np.ndarray, r: int, c: int) -> bool:
    """Whether a pixel of the 3 x 3 neighbourhood of (r, c) is strong (state 2)."""
    for y in range(r - 1, r + 2):
        for x in range(c - 1, c + 2):
            if state[y, x] == 2:
                return True
    return False


@kernel()
def _inner(valid: np.ndarray, r: int, c: int) -> bool:
    """Whether the 3 x 3 neighbourhood of (r, c) is valid (skimage's eroded mask)."""
    for y in range(r - 1, r + 2):
        for x in range(c - 1, c + 2):
            if not valid[y, x]:
                return False
    return True
