"""OME-Zarr (OME-NGFF 0.4 and 0.5) images read with plain ``zarr`` (issue 23; docs/formats.md).

bioio's OME-Zarr plugin does not install next to this project's environment (its ``s3fs`` pins
``fsspec`` and ``botocore`` below the versions here; docs/formats.md), and an OME-Zarr image is a
Zarr group that ``zarr`` (a dependency) reads as it is: the group's ``multiscales`` metadata names
the axes (``t``, ``c``, ``z``, ``y``, ``x``, any subset in that order) and the arrays of the
resolution levels, level 0 being the full resolution; ``omero.channels`` names the channels; the
``t`` axis's scale and unit give the time between time points. Reference: the NGFF specification,
https://ngff.openmicroscopy.org/0.5/ (0.5 keeps the metadata under ``ome`` in a Zarr v3 group;
0.4 at the top of a Zarr v2 group's attributes).

`NgffImage` offers the part of ``bioio.BioImage`` that ``exports.microscopy`` uses, so an
OME-Zarr folder is planned and read like any other microscopy file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

AXES = "tczyx"
# NGFF's time units (the UDUNITS-2 names it allows), in seconds.
TIME_UNITS = {
    "nanosecond": 1e-9,
    "microsecond": 1e-6,
    "millisecond": 1e-3,
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
}


class NgffError(ValueError):
    """An OME-Zarr folder whose metadata or arrays cannot be read; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Dims:
    """Sizes of the five axes (1 for an axis the image does not have)."""

    T: int
    C: int
    Z: int
    Y: int
    X: int


class NgffImage:
    """One OME-Zarr image (a single scene), its level 0 read with ``zarr``."""

    scenes = ("Image:0",)
    ome_metadata = None  # no OME-XML: keys come from the file name, time from the t axis

    def __init__(self, path: str | Path):
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as exc:  # not a Zarr group (missing, corrupt metadata)
            raise NgffError(f"not a Zarr group: {type(exc).__name__}: {exc}") from None
        attrs = dict(group.attrs)
        ome = attrs.get("ome", attrs)  # 0.5 nests the metadata under "ome"
        if not ome.get("multiscales"):
            raise NgffError("no NGFF multiscales metadata")
        multiscale = ome["multiscales"][0]
        self.axes = "".join(axis["name"] for axis in multiscale["axes"])
        positions = [AXES.find(a) for a in self.axes]
        if -1 in positions or positions != sorted(set(positions)):
            raise NgffError(f"axes {self.axes!r} are not a subset of {AXES!r} in that order")
        level = multiscale["datasets"][0]
        self.array = group[level["path"]]
        if not isinstance(self.array, zarr.Array) or self.array.ndim != len(self.axes):
            raise NgffError(f"level 0 ({level['path']!r}) is not a {len(self.axes)}-d array")
        sizes = dict(zip(self.axes, self.array.shape, strict=True))
        self.dims = Dims(*(sizes.get(a, 1) for a in AXES))
        labels = [c.get("label") for c in ome.get("omero", {}).get("channels", [])]
        self.channel_names = (
            labels
            if len(labels) == self.dims.C and all(labels)
            else [f"Channel:0:{i}" for i in range(self.dims.C)]
        )
        self.dtype = self.array.dtype
        self.time_increment_s = _time_increment(multiscale, level, self.axes)

    def set_scene(self, scene: int) -> None:
        if scene != 0:
            raise NgffError(f"scene {scene}: an OME-Zarr image has one")

    def get_image_data(self, order: str, T: int, C: int, Z: int) -> np.ndarray:
        """The (Y, X) plane at ``T``, ``C``, ``Z`` (``order`` must be ``"YX"``)."""
        if order != "YX":
            raise NgffError(f"only YX planes are read, not {order}")
        at = {"t": T, "c": C, "z": Z}
        for axis, i in at.items():
            if not 0 <= i < getattr(self.dims, axis.upper()):
                raise NgffError(f"{axis}={i} is outside the image")
        index = tuple(at.get(a, slice(None)) for a in self.axes)
        return np.asarray(self.array[index])


def _time_increment(multiscale: dict, level: dict, axes: str) -> float | None:
    """Seconds between time points: the t axis's scale (level 0's, times the multiscale's own
    where given) in its unit; None without a t axis or a scale."""
    if "t" not in axes:
        return None
    t = axes.index("t")
    scales = [
        transform["scale"][t]
        for transform in (
            *level.get("coordinateTransformations", ()),
            *multiscale.get("coordinateTransformations", ()),
        )
        if transform.get("type") == "scale"
    ]
    if not scales:
        return None
    unit = multiscale["axes"][t].get("unit")
    if unit not in TIME_UNITS:
        raise NgffError(f"time axis unit {unit!r} is not one of {', '.join(TIME_UNITS)}")
    return float(np.prod(scales)) * TIME_UNITS[unit]
