"""One image in, everything the store keeps about it out: overlays, mask, CCS boxes and patches."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from clanet_store.exports.microscopy import split_ref
from clanet_store.imaging import ccs, decode, mask, overlays
from clanet_store.imaging.params import (
    FIXED,
    CCSParams,
    ExtractorParams,
    MaskParams,
    OverlayParams,
    crop_rows,
)

# Bump whenever the boxes, patches or mask of any image would change with the same parameters
# (an image's extractor key, `params.ExtractorParams.key`, also changes with any parameter).
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


def excluded_pixels(
    grey: np.ndarray, exclusion: str, overlay_params: OverlayParams | None = None
) -> np.ndarray:
    """Pixels no mask or patch may use: the detected overlays, or the reference's bottom crop."""
    if exclusion == "crop-150":
        exclude = np.zeros(grey.shape, bool)
        exclude[grey.shape[0] - crop_rows(grey.shape[0]) :] = True
        return exclude
    found = overlays.find_overlays(grey, params=overlay_params)
    return overlays.exclusion_mask(grey.shape, found)


def extract(
    grey: np.ndarray,
    k: int = ccs.K_STORED,
    size: int = ccs.PATCH_SIZE,
    *,
    mask_params: MaskParams | None = None,
    ccs_params: CCSParams | None = None,
    overlay_params: OverlayParams | None = None,
) -> Extraction:
    """Overlays, brightfield mask and the top ``k`` CCS patches of a uint8 grey image, with the
    method's numbers ``mask_params`` / ``ccs_params`` / ``overlay_params`` (defaults: `params`'
    dataclasses)."""
    mask_params = mask_params or MaskParams()
    exclude = excluded_pixels(grey, mask_params.exclusion, overlay_params)
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
    params: ExtractorParams | None = None,
) -> dict[str, Any]:
    """Ingest's worker task: read, hash, decode, mask + CCS one file with ``params`` (default
    `ExtractorParams()`). Never raises: errors become rejects. It lives here, not in the ingest
    pipeline, so that a Dask worker unpickling it imports only the imaging core (NumPy, SciPy,
    scikit-image), not LanceDB and Zarr (seconds of start-up per worker)."""
    params = params or ExtractorParams()
    plane = None
    try:
        if split_ref(path) is not None:  # a microscopy plane: its pixels are its content
            plane = decode.read_plane(path)
            content = np.ascontiguousarray(plane).tobytes() + str(plane.shape).encode()
        else:
            with open(path, "rb") as f:
                content = f.read()
    except OSError as exc:
        return {"status": "rejected", "error": f"cannot read file: {exc.strerror or exc}"}
    except decode.ImageDecodeError as exc:
        return {"status": "rejected", "error": str(exc)}
    content_hash = hashlib.sha1(content).hexdigest()[:16]
    if content_hash == known_hash:
        return {"status": "unchanged", "content_hash": content_hash}
    try:
        if plane is None:
            grey = decode.read_grey(path, params=params.decode)
        else:
            grey = decode.grey_of_array(path, plane, params=params.decode)
        result = extract(
            grey,
            k=k,
            mask_params=params.mask,
            ccs_params=params.ccs,
            overlay_params=params.overlays,
        )
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
    params: ExtractorParams | None = None,
) -> list[dict[str, Any]]:
    """``extract_file`` over a few images, as one Dask task: every task costs the scheduler, the
    client and the worker's event loop a few ms of CPU, which mask + CCS pay for on a small
    machine."""
    return [extract_file(p, h, k, params) for p, h in zip(paths, known_hashes, strict=True)]


def extractor_params(
    k: int = ccs.K_STORED, size: int = ccs.PATCH_SIZE, params: ExtractorParams | None = None
) -> dict[str, Any]:
    """Every parameter of ``extract``, recorded with the patches (store attributes): the
    extractor key (`ExtractorParams.key`), each step's dataclass in full, the patch count and
    size, and what the compiled code fixes (`params.FixedParams`)."""
    params = params or ExtractorParams()
    record = params.as_dict()
    record["ccs"] |= {"k": k, "patch_size": size}
    return {
        "version": params.key(EXTRACTOR_VERSION),
        **record,
        "fixed": dataclasses.asdict(FIXED),
    }
