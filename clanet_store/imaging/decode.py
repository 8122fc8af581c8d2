"""Decode one image file into the uint8 grey array the mask and CCS work on (SPEC section 1).

* 3-channel images with equal channels (the usual Incucyte JPEG export) give their common channel;
  true colour images give the luma of ``skimage.color.rgb2gray`` (0.2125 R + 0.7154 G + 0.0721 B,
  what the reference's ``imread(as_gray=True)`` uses), rounded; an alpha channel is ignored.
* 8-bit images are kept as they are; 16-bit (raw TIFF archives), other integer and float images
  are scaled to 8 bit linearly from their 0.1th to their 99.9th percentile (clipped), so that a few
  hot or dead pixels do not squash the contrast.
* A microscopy plane reference (``<file>#S<s>T<t>C<c>Z<z>``, `exports.microscopy`) is read
  through bioio and decoded the same way.
* 1280 x 944 exports are resized (bilinear) to 1408 x 1040 as the reference does; every other size,
  including the 704 x 520 LIVECell quarter crops (same pixel size), is kept at its native scale.

The percentiles and the two shapes are `params.DecodeParams` (the defaults above).

A file that cannot be read or decoded raises ``ImageDecodeError`` naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from clanet_store.exports import microscopy
from clanet_store.imaging.params import DecodeParams

LUMA = (2125, 7154, 721)  # rgb2gray weights x 10000: integer arithmetic, exact rounding


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""


def read_grey(path: str | Path, *, params: DecodeParams | None = None) -> np.ndarray:
    """The image at ``path`` as a uint8 (H, W) grey array at working scale (``params``: default
    `DecodeParams()`)."""
    if microscopy.split_ref(str(path)) is not None:
        return grey_of_array(str(path), read_plane(str(path)), params=params)
    path = Path(path)
    try:
        array = _decode(path)
    except Exception as exc:  # any decoder failure (corrupt, truncated, unreadable) is reported
        raise ImageDecodeError(
            f"{path}: cannot decode image ({type(exc).__name__}: {exc})"
        ) from exc
    return grey_of_array(str(path), array, params=params)


def read_plane(ref: str) -> np.ndarray:
    """The raw pixels of a microscopy plane reference (``exports.microscopy``: a file through
    bioio, ``<file>#S<s>T<t>C<c>Z<z>``); ``ImageDecodeError`` naming it otherwise."""
    try:
        return microscopy.read_plane(ref)
    except microscopy.MicroscopyError as exc:
        raise ImageDecodeError(f"{ref}: {exc}") from exc


def grey_of_array(
    path: str, array: np.ndarray, *, params: DecodeParams | None = None
) -> np.ndarray:
    """A decoded pixel array (of the file ``path``, for errors) as uint8 grey at working scale."""
    params = params or DecodeParams()
    try:
        grey = to_grey8(array, params.scale_percentiles)
    except ValueError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc
    return to_working_scale(grey, params)


def _decode(path: Path) -> np.ndarray:
    """Pixel array of a file: Pillow first; tifffile for the TIFFs Pillow cannot open."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            return np.asarray(im)
    except OSError:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
        return tifffile.imread(path, key=0)


def to_grey8(
    array: np.ndarray, percentiles: tuple[float, float] = DecodeParams.scale_percentiles
) -> np.ndarray:
    """A decoded pixel array (H, W), (H, W, C) or (C, H, W) as uint8 (H, W) grey; deeper than
    8 bit: scaled from its ``percentiles``."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4) and a.shape[0] in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3:
        channels = a.shape[-1]
        if channels not in (1, 2, 3, 4):
            raise ValueError(f"unsupported image shape {a.shape}")
        a = _grey_of(a[..., :3]) if channels >= 3 else a[..., 0]
    if a.ndim != 2 or min(a.shape) == 0:
        raise ValueError(f"unsupported image shape {np.shape(array)}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    return _scale_to_8bit(a, percentiles)


def _grey_of(rgb: np.ndarray) -> np.ndarray:
    """rgb2gray luma: uint8 stays integer (rounded half up), other types become float64.

    A pixel with equal channels keeps its value, so for uint8 only the coloured pixels (the
    overlays of an Incucyte JPEG) need the arithmetic.
    """
    if rgb.dtype != np.uint8:
        return rgb.astype(np.float64) @ (np.array(LUMA, np.float64) / 10000)
    grey = rgb[..., 0].copy()
    coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])
    r, g, b = (rgb[..., i][coloured].astype(np.uint32) for i in range(3))
    grey[coloured] = (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b + 5000) // 10000
    return grey


def _scale_to_8bit(a: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Linear map of the ``percentiles`` range onto 0..255, clipped; a flat image becomes 0."""
    values = a.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("image has no finite pixel value")
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_working_scale(grey: np.ndarray, params: DecodeParams | None = None) -> np.ndarray:
    """Resize ``legacy_shape`` exports (1280 x 944) to ``working_shape`` (1408 x 1040, bilinear);
    keep every other size."""
    params = params or DecodeParams()
    if grey.shape != params.legacy_shape:
        return grey
    # Imported here: scikit-image and the SciPy modules it pulls in cost each ingest worker 0.6-0.9
    # s of start-up (python -X importtime), and only 1280 x 944 exports need them.
    from skimage.transform import resize

    up = resize(grey, params.working_shape, order=1, preserve_range=True, anti_aliasing=False)
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)
