"""One image through mask + CCS (the ``patches`` command): its top-K boxes, optionally drawn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clanet_store.errors import ClanetError
from clanet_store.imaging.decode import ImageDecodeError, read_grey
from clanet_store.imaging.draw import draw_extraction
from clanet_store.imaging.extract import EXTRACTOR_VERSION, extract


@dataclass(frozen=True)
class PatchesReport:
    """The image's size, confluency and mask, the boxes (rank, x, y, w, h, density) and the
    drawing written, if any."""

    image: str
    height: int
    width: int
    confluency: float
    mask_fraction: float
    overlay_pixels: int
    extractor_version: str
    boxes: list[dict[str, Any]]
    drawing: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def image_patches(image: Path, k: int, out: Path | None = None) -> PatchesReport:
    """Mask + CCS on ``image`` (`imaging.extract.extract`); the drawing written to ``out``."""
    try:
        grey = read_grey(image)
    except (ImageDecodeError, OSError) as exc:
        raise ClanetError(str(exc)) from None
    result = extract(grey, k=k)
    if out is not None:
        draw_extraction(grey, result, out)
    return PatchesReport(
        image=str(image),
        height=grey.shape[0],
        width=grey.shape[1],
        confluency=result.confluency,
        mask_fraction=result.mask_fraction,
        overlay_pixels=int(result.exclude.sum()),
        extractor_version=EXTRACTOR_VERSION,
        boxes=[
            {name: box[name].item() for name in result.boxes.dtype.names} for box in result.boxes
        ],
        drawing=None if out is None else str(out),
    )
