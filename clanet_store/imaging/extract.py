"""One image in, everything the store keeps about it out: overlays, mask, CCS boxes and patches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from clanet_store.imaging import ccs, decode, mask, overlays
from clanet_store.imaging.params import (
    CCSParams,
    MaskParams,
    crop_rows,
    extractor_key,
    params_dict,
)

# Bump whenever the boxes, patches or mask of any image would change with the same parameters
# (an image's extractor key, `params.extractor_key`, also changes with any parameter).
EXTRACTOR_VERSION = "ccs-1"


@dataclass(frozen=True)
class Extraction:
    """What ``extract`` finds in one grey image.

    mask: cells (bool, H x W). exclude: overlay pixels (bool, H x W). boxes: the CCS structured
    array (x, y, w, h, density, rank), best first. patches: their pixels, (n, size, size) uint8.
    confluency: mask fraction of the non-overlay pixels (the paper's confluency). mask_fraction:
    mask fraction of the whole image.
    """

    mask: np.ndarray
    exclude: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray
    confluency: float
    mask_fraction: float


def excluded_pixels(grey: np.ndarray, exclusion: str) -> np.ndarray:
    """Pixels no mask or patch may use: the detected overlays, or the reference's bottom crop."""
    if exclusion == "crop-150":
        exclude = np.zeros(grey.shape, bool)
        exclude[grey.shape[0] - crop_rows(grey.shape[0]) :] = True
        return exclude
    return overlays.exclusion_mask(grey.shape, overlays.find_overlays(grey))


def extract(
    grey: np.ndarray,
    k: int = ccs.K_STORED,
    size: int = ccs.PATCH_SIZE,
    *,
    mask_params: MaskParams | None = None,
    ccs_params: CCSParams | None = None,
) -> Extraction:
    """Overlays, brightfield mask and the top ``k`` CCS patches of a uint8 grey image, with the
    method's numbers ``mask_params`` / ``ccs_params`` (defaults: `params`' dataclasses)."""
    mask_params = mask_params or MaskParams()
    exclude = excluded_pixels(grey, mask_params.exclusion)
    cells = mask.brightfield_mask(grey, exclude, params=mask_params)
    boxes = ccs.select_patches(grey, cells, k=k, size=size, exclude=exclude, params=ccs_params)
    return Extraction(
        mask=cells,
        exclude=exclude,
        boxes=boxes,
        patches=ccs.crop_patches(grey, boxes, size),
        confluency=mask.confluency(cells, exclude),
        mask_fraction=float(np.count_nonzero(cells)) / cells.size,
    )


def extract_file(
    path: str,
    known_hash: str | None = None,
    k: int = ccs.K_STORED,
    mask_params: MaskParams | None = None,
    ccs_params: CCSParams | None = None,
) -> dict[str, Any]:
    """Ingest's worker task: read, hash, decode, mask + CCS one file. Never raises: errors become
    rejects. It lives here, not in the ingest pipeline, so that a Dask worker unpickling it
    imports only the imaging core (NumPy, SciPy, scikit-image), not LanceDB and Zarr (seconds of
    start-up per worker)."""
    try:
        with open(path, "rb") as f:
            content_hash = hashlib.sha1(f.read()).hexdigest()[:16]
    except OSError as exc:
        return {"status": "rejected", "error": f"cannot read file: {exc.strerror or exc}"}
    if content_hash == known_hash:
        return {"status": "unchanged", "content_hash": content_hash}
    try:
        grey = decode.read_grey(path)
        result = extract(grey, k=k, mask_params=mask_params, ccs_params=ccs_params)
    except Exception as exc:  # a bad image must reject one file, never stop the run
        return {"status": "rejected", "error": str(exc), "content_hash": content_hash}
    return {
        "status": "ok",
        "content_hash": content_hash,
        "patches": result.patches,
        "boxes": result.boxes,
        "confluency": result.confluency,
        "mask_fraction": result.mask_fraction,
    }


def extract_files(
    paths: list[str],
    known_hashes: list[str | None],
    k: int = ccs.K_STORED,
    mask_params: MaskParams | None = None,
    ccs_params: CCSParams | None = None,
) -> list[dict[str, Any]]:
    """``extract_file`` over a few images, as one Dask task: every task costs the scheduler, the
    client and the worker's event loop a few ms of CPU, which mask + CCS pay for on a small
    machine."""
    return [
        extract_file(p, h, k, mask_params, ccs_params)
        for p, h in zip(paths, known_hashes, strict=True)
    ]


def extractor_params(
    k: int = ccs.K_STORED,
    size: int = ccs.PATCH_SIZE,
    mask_params: MaskParams | None = None,
    ccs_params: CCSParams | None = None,
) -> dict[str, Any]:
    """Every parameter of ``extract``, recorded with the patches (store attributes): the settable
    ones from the dataclasses, the fixed ones from the modules that compile them in, and the
    extractor key they give (`params.extractor_key`)."""
    mask_params, ccs_params = mask_params or MaskParams(), ccs_params or CCSParams()
    settable = params_dict(mask_params, ccs_params)
    return {
        "version": extractor_key(EXTRACTOR_VERSION, mask_params, ccs_params),
        "decode": {
            "working_shape": list(decode.WORKING_SHAPE),
            "legacy_shape": list(decode.LEGACY_SHAPE),
            "scale_percentiles": list(decode.SCALE_PERCENTILES),
        },
        "overlays": {
            "bar_min_grey": overlays.BAR_MIN_GREY,
            "min_bar_length": overlays.MIN_BAR_LENGTH,
            "bar_margins": dict(overlays.BAR_MARGINS),
            "box_max_grey": overlays.BOX_MAX_GREY,
            "min_box": list(overlays.MIN_BOX),
            "box_margin": overlays.BOX_MARGIN,
        },
        "mask": {
            **settable["mask"],
            "otsu_bins": mask.OTSU_BINS,
            "canny_sigma": mask.CANNY_SIGMA,
            "canny_thresholds": list(mask.CANNY_THRESHOLDS),
            "fill_structure": mask.FILL_STRUCTURE,
        },
        "ccs": {
            **settable["ccs"],
            "k": k,
            "patch_size": size,
            "grey_bins": ccs.GREY_BINS,
            "lbp_points": ccs.LBP_POINTS,
            "lbp_radius": ccs.LBP_RADIUS,
            "lbp_bins": ccs.LBP_BINS,
        },
    }
