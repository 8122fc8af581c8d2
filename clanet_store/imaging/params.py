"""The method parameters of extraction as data (SPEC 1-3, issue 19): decode, overlays, mask, CCS.

Frozen dataclasses, passed by keyword (``extract(grey, mask_params=MaskParams(min_object=200))``,
scikit-image style; compiled kernels take them as arguments), settable from a pipeline TOML
(``[ingest.decode]``, ``[ingest.overlays]``, ``[ingest.mask]``, ``[ingest.ccs]``) and recorded
with what they produce: `ExtractorParams.key` names the extractor an image's patches came from
(the images table's ``extractor_version``), so that changing any value makes the next ingest
re-extract every image, and `extract.extractor_params` writes every value out
(`dataclasses.asdict`, never a hand copy). Where the SPEC lets the reference and this project
differ, the other choice is a value here:

- ``MaskParams.exclusion``: ``overlays`` (detect the burned-in scale bar and time stamp and exclude
  their pixels; the default) or ``crop-150`` (the reference: drop the bottom 150 rows of a
  1040-row image, scaled to the image height);
- ``CCSParams.tie_break``: ``farthest-first`` (spread equal-density boxes over the field; the
  default) or ``creation-order`` (the reference's, which piles the patches of a confluent image
  into one block of tiles).

What the compiled code itself fixes (the 3 x 3 closing, the 6 x 6 fill, the CCS histogram bins,
the LBP P / R, the Gaussian's truncation at 4 sigma) is `FixedParams`: recorded, not settable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

EXCLUSIONS = ("overlays", "crop-150")
TIE_BREAKS = ("farthest-first", "creation-order")
REFERENCE_CROP_ROWS = 150  # of a 1040-row image
REFERENCE_HEIGHT = 1040


@dataclass(frozen=True)
class DecodeParams:
    """How a file becomes the uint8 grey image (SPEC 1, `decode`): exports of ``legacy_shape``
    (rows, columns) are resized to ``working_shape``; images deeper than 8 bit are scaled from
    their ``scale_percentiles``."""

    working_shape: tuple[int, int] = (1040, 1408)
    legacy_shape: tuple[int, int] = (944, 1280)
    scale_percentiles: tuple[float, float] = (0.1, 99.9)

    def __post_init__(self) -> None:
        for name in ("working_shape", "legacy_shape"):
            shape = _pair(self, name, int)
            if min(shape) < 1:
                raise ValueError(f"{name} must be two sizes >= 1, got {shape}")
        low, high = _pair(self, "scale_percentiles", float)
        if not 0 <= low < high <= 100:
            raise ValueError(f"scale_percentiles must be 0 <= low < high <= 100, got {low, high}")


@dataclass(frozen=True)
class OverlayParams:
    """What makes a burned-in overlay unlike cells (`overlays`; defaults fitted to the 72 real
    AZGCB exports). Scale bar: 2-8 (``bar_thickness``) rows of at least ``min_bar_length``
    pixels >= ``bar_min_grey`` whose grey value varies by at most ``bar_max_std`` along the row,
    row ends within ``bar_align`` px; its labels: the bar's box widened by the ``bar_margin_*``
    and at least ``bar_min_width`` wide. Time stamp: a near-black (<= ``box_max_grey``) box of at
    least ``min_box`` (height, width), bottom edge ``box_bottom_dark`` near-black, widened by
    ``box_margin`` px."""

    bar_min_grey: int = 190
    bar_max_std: float = 12.0
    min_bar_length: int = 100
    bar_thickness: tuple[int, int] = (2, 8)
    bar_align: int = 4
    bar_margin_above: int = 48
    bar_margin_below: int = 44
    bar_margin_left: int = 16
    bar_margin_right: int = 40
    bar_min_width: int = 320
    box_max_grey: int = 24
    min_box: tuple[int, int] = (12, 60)
    box_bottom_dark: float = 0.9
    box_margin: int = 3

    def __post_init__(self) -> None:
        thin, thick = _pair(self, "bar_thickness", int)
        _pair(self, "min_box", int)
        if not 1 <= thin <= thick:
            raise ValueError(f"bar_thickness must be 1 <= min <= max, got {thin, thick}")
        if not 0 <= self.bar_min_grey <= 255 or not 0 <= self.box_max_grey <= 255:
            raise ValueError("bar_min_grey and box_max_grey must be grey levels 0..255")
        if not 0 < self.box_bottom_dark <= 1:
            raise ValueError(f"box_bottom_dark must be in (0, 1], got {self.box_bottom_dark}")


@dataclass(frozen=True)
class MaskParams:
    """The brightfield mask's numbers (SPEC 2; defaults: the reference workflow's). Otsu's
    threshold uses ``otsu_bins`` bins; Canny smooths with ``canny_sigma`` and keeps edges by
    hysteresis between ``canny_low`` and ``canny_high`` (skimage's ``canny`` arguments)."""

    percentiles: tuple[float, float] = (0.2, 99.8)
    invert_disagreement: float = 0.5
    max_iterations: int = 10
    tolerance: float = 1e-4
    min_hole: int = 64
    min_object: int = 100
    exclusion: str = "overlays"
    otsu_bins: int = 256
    canny_sigma: float = 1.0
    canny_low: float = 0.1
    canny_high: float = 0.2

    def __post_init__(self) -> None:
        low, high = _pair(self, "percentiles", float)
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles must be 0 <= low < high <= 100, got {self.percentiles}")
        if self.exclusion not in EXCLUSIONS:
            raise ValueError(f"unknown exclusion {self.exclusion!r}; choose one of {EXCLUSIONS}")
        if self.max_iterations < 0 or self.min_hole < 0 or self.min_object < 0:
            raise ValueError("max_iterations, min_hole and min_object must be >= 0")
        if self.otsu_bins < 2 or self.canny_sigma <= 0:
            raise ValueError("otsu_bins must be >= 2 and canny_sigma > 0")
        if not 0 <= self.canny_low <= self.canny_high:
            raise ValueError(
                f"Canny thresholds must be 0 <= low <= high, got {self.canny_low, self.canny_high}"
            )


@dataclass(frozen=True)
class CCSParams:
    """Cell Cluster-level Selection's numbers (SPEC 3) other than the patch size and slots."""

    max_regions: int = 40
    tile_factor: float = 2.0
    tie_break: str = "farthest-first"

    def __post_init__(self) -> None:
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"unknown tie_break {self.tie_break!r}; choose one of {TIE_BREAKS}")
        if self.max_regions < 1 or self.tile_factor <= 0:
            raise ValueError("max_regions must be >= 1 and tile_factor > 0")


@dataclass(frozen=True)
class FixedParams:
    """Numbers the compiled code fixes (recorded with the extractor, not settable): the mask's
    closing (3 x 3 cross) and hole filling (6 x 6 structure), the Gaussian's truncation (4
    sigma, skimage's), CCS's grey and LBP histogram bins and its LBP (P = 8, R = 1)."""

    closing: str = "3x3 cross"
    fill_structure: int = 6
    gaussian_truncate: float = 4.0
    grey_bins: int = 25
    lbp_bins: int = 10
    lbp_points: int = 8
    lbp_radius: int = 1


FIXED = FixedParams()


@dataclass(frozen=True)
class ExtractorParams:
    """Every settable number of one extraction, by step (the defaults: this project's)."""

    decode: DecodeParams = field(default_factory=DecodeParams)
    overlays: OverlayParams = field(default_factory=OverlayParams)
    mask: MaskParams = field(default_factory=MaskParams)
    ccs: CCSParams = field(default_factory=CCSParams)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The values by step, JSON-ready."""
        return {step.name: _plain(getattr(self, step.name)) for step in fields(self)}

    def key(self, version: str) -> str:
        """The extractor key: ``version`` for the default values (so stores extracted before
        parameters were data stay current), else ``version+<hash of the values>``."""
        if self == ExtractorParams():
            return version
        text = json.dumps(self.as_dict(), sort_keys=True)
        return f"{version}+{hashlib.sha1(text.encode()).hexdigest()[:10]}"


# The steps of `ExtractorParams` and their dataclasses (a pipeline TOML's [ingest.<step>]).
STEPS: dict[str, type] = {
    "decode": DecodeParams,
    "overlays": OverlayParams,
    "mask": MaskParams,
    "ccs": CCSParams,
}


def crop_rows(height: int) -> int:
    """The reference's bottom crop (150 of 1040 rows) for an image of ``height`` rows."""
    return round(REFERENCE_CROP_ROWS * height / REFERENCE_HEIGHT)


def parse_params(
    mask: MaskParams | dict[str, Any] | None = None,
    ccs: CCSParams | dict[str, Any] | None = None,
    decode: DecodeParams | dict[str, Any] | None = None,
    overlays: OverlayParams | dict[str, Any] | None = None,
) -> ExtractorParams:
    """`ExtractorParams` from dataclasses, their dicts (a pipeline TOML's tables) or None (the
    defaults); TypeError / ValueError on an unknown key or a bad value."""
    given = {"mask": mask, "ccs": ccs, "decode": decode, "overlays": overlays}
    return ExtractorParams(
        **{
            name: value if isinstance(value, STEPS[name]) else STEPS[name](**(value or {}))
            for name, value in given.items()
        }
    )


def _pair(params: Any, name: str, kind: type) -> tuple[Any, Any]:
    """Field ``name`` of a frozen dataclass as a tuple of two ``kind`` (a TOML gives a list)."""
    values = tuple(kind(v) for v in getattr(params, name))
    if len(values) != 2:
        raise ValueError(f"{name} must have two values, got {getattr(params, name)!r}")
    object.__setattr__(params, name, values)
    return values


def _plain(params: Any) -> dict[str, Any]:
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(params).items()
    }
