"""The method parameters of extraction as data (SPEC 2-3, issue 19): mask, CCS, overlay handling.

Frozen dataclasses, passed by keyword (``extract(grey, mask=MaskParams(min_object=200))``,
scikit-image style), settable from a pipeline TOML (``[ingest.mask]``, ``[ingest.ccs]``) and
recorded with what they produce: `extractor_key` names the extractor an image's patches came from
(the images table's ``extractor_version``), so that changing any value makes the next ingest
re-extract every image, and `extractor_record` writes every value out. Where the SPEC lets the
reference and this project differ, the other choice is a value here:

- ``MaskParams.exclusion``: ``overlays`` (detect the burned-in scale bar and time stamp and exclude
  their pixels; the default) or ``crop-150`` (the reference: drop the bottom 150 rows of a
  1040-row image, scaled to the image height);
- ``CCSParams.tie_break``: ``farthest-first`` (spread equal-density boxes over the field; the
  default) or ``creation-order`` (the reference's, which piles the patches of a confluent image
  into one block of tiles).

Constants compiled into the kernels (Canny's sigma and thresholds, the 3 x 3 closing, the 6 x 6
fill, 256 Otsu bins, the CCS histogram bins and the LBP P / R) are recorded but not settable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

EXCLUSIONS = ("overlays", "crop-150")
TIE_BREAKS = ("farthest-first", "creation-order")
REFERENCE_CROP_ROWS = 150  # of a 1040-row image
REFERENCE_HEIGHT = 1040


@dataclass(frozen=True)
class MaskParams:
    """The brightfield mask's numbers (SPEC 2; defaults: the reference workflow's)."""

    percentiles: tuple[float, float] = (0.2, 99.8)
    invert_disagreement: float = 0.5
    max_iterations: int = 10
    tolerance: float = 1e-4
    min_hole: int = 64
    min_object: int = 100
    exclusion: str = "overlays"

    def __post_init__(self) -> None:
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles must be 0 <= low < high <= 100, got {self.percentiles}")
        if self.exclusion not in EXCLUSIONS:
            raise ValueError(f"unknown exclusion {self.exclusion!r}; choose one of {EXCLUSIONS}")
        if self.max_iterations < 0 or self.min_hole < 0 or self.min_object < 0:
            raise ValueError("max_iterations, min_hole and min_object must be >= 0")


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


def crop_rows(height: int) -> int:
    """The reference's bottom crop (150 of 1040 rows) for an image of ``height`` rows."""
    return round(REFERENCE_CROP_ROWS * height / REFERENCE_HEIGHT)


def params_dict(mask: MaskParams, ccs: CCSParams) -> dict[str, Any]:
    """The settable values, JSON-ready."""
    return {"mask": _plain(mask), "ccs": _plain(ccs)}


def extractor_key(version: str, mask: MaskParams, ccs: CCSParams) -> str:
    """``version`` for the default parameters (so stores extracted before parameters were data
    stay current), else ``version+<hash of the values>``."""
    if (mask, ccs) == (MaskParams(), CCSParams()):
        return version
    text = json.dumps(params_dict(mask, ccs), sort_keys=True)
    return f"{version}+{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def parse_params(
    mask: MaskParams | dict[str, Any] | None, ccs: CCSParams | dict[str, Any] | None
) -> tuple[MaskParams, CCSParams]:
    """Dataclasses from themselves, their dicts (a pipeline TOML) or None (the defaults)."""
    return (
        mask if isinstance(mask, MaskParams) else MaskParams(**(mask or {})),
        ccs if isinstance(ccs, CCSParams) else CCSParams(**(ccs or {})),
    )


def _plain(params: Any) -> dict[str, Any]:
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(params).items()
    }
