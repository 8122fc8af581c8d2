"""Image corruptions for QC validation and robustness checks, with the severities of SPEC 8.

| kind | severity 1 .. 5 |
|---|---|
| defocus (disk blur radius, px) | 0.5, 1, 1.5, 2, 3 |
| contrast, down (gain about the image mean) | 0.9, 0.75, 0.6, 0.45, 0.3 |
| contrast, up | 1.5, 2, 2.5, 3, 3.5 |
| brightness, down / up (8-bit bias) | -50 .. -150 / +50 .. +150 in steps of 25 |

The functions take and return uint8 grey images (results rounded and clipped to 0..255);
``pipelines.corrupt.corrupt_export`` writes a corrupted copy of a whole export.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve

KINDS = ("defocus", "contrast", "brightness")
DIRECTIONS = ("down", "up")
SEVERITIES = {
    ("defocus", "down"): (0.5, 1.0, 1.5, 2.0, 3.0),
    ("contrast", "down"): (0.9, 0.75, 0.6, 0.45, 0.3),
    ("contrast", "up"): (1.5, 2.0, 2.5, 3.0, 3.5),
    ("brightness", "down"): (-50.0, -75.0, -100.0, -125.0, -150.0),
    ("brightness", "up"): (50.0, 75.0, 100.0, 125.0, 150.0),
}
SUPERSAMPLE = 16


def corruption_parameter(kind: str, severity: int, direction: str = "down") -> float:
    """The blur radius, gain or bias of ``kind`` at ``severity`` 1..5 (defocus has no direction)."""
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r} (known: {', '.join(KINDS)})")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return SEVERITIES[(kind, "down" if kind == "defocus" else direction)][severity - 1]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def disk_kernel(radius: float) -> np.ndarray:
    """Normalised defocus kernel: a disk of ``radius`` px seen through square pixels.

    The weight of offset ``d`` is the disk integrated against the pixel footprint applied twice
    (camera pixel and display pixel: a triangle of half-width 1 per axis), sampled ``SUPERSAMPLE``
    times per pixel, so even a 0.5 px radius blurs its neighbours a little.
    """
    half = int(np.ceil(radius))
    t = (np.arange(2 * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 1.0  # samples of (-1, 1)
    tri = 1.0 - np.abs(t)
    fine = np.arange(-half, half + 1)[:, None] + t[None, :]  # (offsets, samples)
    inside = fine[:, None, :, None] ** 2 + fine[None, :, None, :] ** 2 <= radius**2
    kernel = np.einsum("yxab,a,b->yx", inside, tri, tri)
    return kernel / kernel.sum()


def defocus(grey: np.ndarray, radius: float) -> np.ndarray:
    """Defocus blur: convolution with a disk of ``radius`` px (borders reflected)."""
    return _to_uint8(convolve(grey.astype(np.float32), disk_kernel(radius), mode="reflect"))


def contrast(grey: np.ndarray, gain: float) -> np.ndarray:
    """Contrast change: ``mean + gain * (pixel - mean)`` about the image mean."""
    values = grey.astype(np.float32)
    mean = values.mean()
    return _to_uint8(mean + gain * (values - mean))


def brightness(grey: np.ndarray, bias: float) -> np.ndarray:
    """Brightness change: ``pixel + bias`` (8-bit units)."""
    return _to_uint8(grey.astype(np.float32) + bias)


_APPLY = {"defocus": defocus, "contrast": contrast, "brightness": brightness}


def corrupt(grey: np.ndarray, kind: str, severity: int, direction: str = "down") -> np.ndarray:
    """``grey`` (uint8) corrupted by ``kind`` at ``severity`` 1..5."""
    return _APPLY[kind](grey, corruption_parameter(kind, severity, direction))
