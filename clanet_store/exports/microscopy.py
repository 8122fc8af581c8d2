"""Multi-dimensional microscopy files read through bioio: OME-TIFF, OME-Zarr, ND2, CZI (issue 23).

One file holds scenes x time points x channels x Z planes; CLANet reads one grey image per time
point, so a file becomes one manifest row per (scene, T), each addressed by a *plane reference*
``<file>#S<scene>T<t>C<channel>Z<z>`` (the image's ``path``; its id is the hash of that string):

* **C**: the phase / brightfield channel, chosen by name (`TRANSMITTED`); the other channels are
  fluorescence, ignored and counted (like a raw archive's ``C1`` files). A file with one channel
  of bioio's default name (``Channel:0:0``) takes that channel.
* **Z**: the middle plane (``SizeZ // 2``), the plane a brightfield stack is focused on; a
  maximum projection would mix out-of-focus planes into a transmitted-light image.
* **Keys**: plate, well, field and time from the OME metadata where it has them (a ``Plate`` whose
  ``WellSample`` points at the image; ``Plane DeltaT``, else ``Pixels TimeIncrement`` x T, or an
  OME-Zarr's t-axis scale x T; the image's ``AcquisitionDate``), else experiment, well and field
  from the file name ``<experiment>_<well>[_<field>].<ext>`` (a file with several scenes names no
  field: its scenes are fields 1, 2, ...). Cell line and batch come from the plate map by
  (experiment, well).

OME-Zarr is read with plain ``zarr`` (`exports.ngff`: bioio's plugin does not install next to
this project's environment); the other formats need their bioio plugin (``pip install
'clanet-store[formats]'`` for OME-TIFF and CZI); a missing plugin is an error naming the file and
the package to install. docs/formats.md.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np

from clanet_store.exports.names import NameParseError, parse_well
from clanet_store.exports.ngff import NgffImage

# Suffix (lower case) -> (format name, bioio plugin package; None: read with zarr, exports.ngff).
PLUGINS = {
    ".ome.tif": ("ome-tiff", "bioio-ome-tiff"),
    ".ome.tiff": ("ome-tiff", "bioio-ome-tiff"),
    ".ome.zarr": ("ome-zarr", None),
    ".nd2": ("nd2", "bioio-nd2"),
    ".czi": ("czi", "bioio-czi"),
}
# Channel names of transmitted light (phase contrast, brightfield, DIC), case-insensitive.
TRANSMITTED = re.compile(r"^(ph|p|bf|tl|dic)$|phase|bright|trans", re.IGNORECASE)
_DEFAULT_CHANNEL = re.compile(r"^Channel:\d+:\d+$")
_REF = re.compile(r"^(?P<file>.+)#S(?P<s>\d+)T(?P<t>\d+)C(?P<c>\d+)Z(?P<z>\d+)$")
_FILE_NAME = re.compile(r"^(?P<experiment>.+?)_(?P<well>[A-Za-z]+\d+)(?:_(?P<field>[1-9]\d*))?$")
_SECONDS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0, "d": 86400.0}


class MicroscopyError(ValueError):
    """A microscopy file that cannot be read or placed; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Plane:
    """One image of a microscopy file: its address, keys and size."""

    ref: str  # plane reference, relative like the file's path
    experiment: str
    well: str
    location: int
    timepoint_h: float
    acquired_at: datetime | None
    channel: str
    width: int
    height: int
    bits: int


def suffix_of(name: str) -> str | None:
    """The microscopy suffix of a file (or ``.ome.zarr`` folder) name, None for other files."""
    lower = name.lower()
    return next((s for s in PLUGINS if lower.endswith(s)), None)


def split_ref(path: str) -> tuple[str, int, int, int, int] | None:
    """``(file, scene, t, c, z)`` of a plane reference, None for a plain path."""
    m = _REF.match(path)
    if m is None or suffix_of(m.group("file")) is None:
        return None
    return (m.group("file"), *(int(m.group(k)) for k in "stcz"))


def open_image(path: str) -> Any:
    """A ``bioio.BioImage`` of ``path`` with its format's plugin as the reader (an `NgffImage`
    for OME-Zarr); errors (no plugin, unreadable file) give the reason, the caller names the
    file."""
    suffix = suffix_of(path)
    if suffix is None:
        raise MicroscopyError(f"not a microscopy file ({', '.join(PLUGINS)})")
    kind, package = PLUGINS[suffix]
    if package is None:
        try:
            return NgffImage(path)
        except Exception as exc:  # NgffError, or zarr's own on a broken array
            raise MicroscopyError(f"cannot read {kind} ({_one_line(exc)})") from None
    try:
        bioio = importlib.import_module("bioio")
        plugin = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise MicroscopyError(
            f"reading {kind} needs the bioio plugin {package}: pip install {package}"
        ) from None
    try:
        with _quiet_readers():
            return bioio.BioImage(path, reader=plugin.Reader)
    except Exception as exc:  # any reader failure (corrupt, truncated)
        raise MicroscopyError(f"cannot read {kind} ({_one_line(exc)})") from None


@contextmanager
def _quiet_readers() -> Iterator[None]:
    """bioio and tifffile log each failed attempt as a warning; the reject says it once."""
    loggers = [logging.getLogger(name) for name in ("bioio", "bioio_base", "tifffile")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _one_line(exc: Exception) -> str:
    """The last line of an exception's message (bioio lists each reader it tried), one line."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def read_plane(path: str) -> np.ndarray:
    """The pixels (Y, X) of the plane reference ``path`` (an absolute file plus its fragment)."""
    parts = split_ref(path)
    if parts is None:
        raise MicroscopyError("not a plane reference (<file>#S<s>T<t>C<c>Z<z>)")
    file, scene, t, c, z = parts
    try:
        info = os.stat(file)
        image = _opened(file, info.st_mtime_ns, info.st_size)
        image.set_scene(scene)
        with _quiet_readers():
            return np.asarray(image.get_image_data("YX", T=t, C=c, Z=z))
    except MicroscopyError:
        raise
    except Exception as exc:
        raise MicroscopyError(f"cannot read plane ({_one_line(exc)})") from None


@lru_cache(maxsize=4)
def _opened(file: str, mtime_ns: int, size: int) -> Any:
    """Open a file once per process and version: a worker reads the planes of one file in a
    row."""
    return open_image(file)


def planes(path: str, rel: str) -> tuple[list[Plane], int]:
    """The planes CLANet reads from the file at ``path`` (relative path ``rel``), and how many
    fluorescence planes it ignores. ``MicroscopyError`` / ``NameParseError`` with the reason."""
    image = open_image(path)
    try:
        with _quiet_readers():
            return _planes(image, rel)
    except (MicroscopyError, NameParseError):
        raise
    except Exception as exc:
        raise MicroscopyError(f"cannot read metadata ({_one_line(exc)})") from None


def _planes(image: Any, rel: str) -> tuple[list[Plane], int]:
    ome = _ome(image)
    wells = _ome_wells(ome)
    scenes = list(image.scenes)
    out: list[Plane] = []
    ignored = 0
    for s, scene in enumerate(scenes):
        image.set_scene(s)
        dims = image.dims
        names = [str(n) for n in image.channel_names]
        c = _transmitted_channel(names)
        ignored += dims.T * (len(names) - 1)
        ome_image = _ome_image(ome, s)
        experiment, well, location = wells.get(_image_id(ome_image, scene)) or _name_keys(
            rel, s, len(scenes)
        )
        z = dims.Z // 2
        increment = _increment_s(image, ome_image)
        for t in range(dims.T):
            hours, acquired = _time(ome_image, t, c, z, dims.T, increment)
            out.append(
                Plane(
                    ref=f"{rel}#S{s}T{t}C{c}Z{z}",
                    experiment=experiment,
                    well=well,
                    location=location,
                    timepoint_h=hours,
                    acquired_at=acquired,
                    channel=names[c],
                    width=int(dims.X),
                    height=int(dims.Y),
                    bits=np.dtype(image.dtype).itemsize * 8,
                )
            )
    return out, ignored


def _transmitted_channel(names: list[str]) -> int:
    """Index of the phase / brightfield channel; the only channel when it has a default name."""
    found = [i for i, n in enumerate(names) if TRANSMITTED.search(n)]
    if len(found) == 1:
        return found[0]
    if not found and len(names) == 1 and _DEFAULT_CHANNEL.match(names[0]):
        return 0
    what = "several" if found else "no"
    raise MicroscopyError(
        f"{what} phase / brightfield channel among {', '.join(names)} (names matching "
        f"{TRANSMITTED.pattern!r})"
    )


def _ome(image: Any) -> Any:
    """The OME metadata (``ome_types.OME``) of an image, None where the reader has none."""
    try:
        return image.ome_metadata
    except Exception:  # readers without an OME conversion (some ND2 / CZI variants)
        return None


def _ome_image(ome: Any, scene: int) -> Any:
    return ome.images[scene] if ome is not None and scene < len(ome.images) else None


def _image_id(ome_image: Any, scene: str) -> str:
    return ome_image.id if ome_image is not None else scene


def _ome_wells(ome: Any) -> dict[str, tuple[str, str, int]]:
    """``{image id: (plate name, well, field)}`` from the OME plates (field: 1-based position of
    the sample in its well)."""
    out: dict[str, tuple[str, str, int]] = {}
    for plate in ome.plates if ome is not None else ():
        name = plate.name or plate.id
        for well in plate.wells:
            label = parse_well(f"{chr(ord('A') + well.row)}{well.column + 1}")
            for field, sample in enumerate(well.well_samples, start=1):
                if sample.image_ref is not None:
                    out[sample.image_ref.id] = (name, label, field)
    return out


def _name_keys(rel: str, scene: int, scenes: int) -> tuple[str, str, int]:
    """Experiment, well and field from ``<experiment>_<well>[_<field>].<ext>``."""
    name = rel.rsplit("/", 1)[-1]
    stem = name[: len(name) - len(suffix_of(name) or "")]
    m = _FILE_NAME.match(stem)
    if m is None:
        raise NameParseError(
            "no plate / well in the OME metadata and the file name is not "
            "<experiment>_<well>[_<field>]"
        )
    if m.group("field") is not None and scenes > 1:
        field = m.group("field")
        raise NameParseError(f"the name gives field {field} but the file has {scenes} scenes")
    field = int(m.group("field")) if m.group("field") is not None else scene + 1
    return m.group("experiment"), parse_well(m.group("well")), field


def _increment_s(image: Any, ome_image: Any) -> float | None:
    """Seconds between time points: an OME-Zarr's t-axis scale, else ``Pixels TimeIncrement``."""
    if isinstance(image, NgffImage):
        return image.time_increment_s
    if ome_image is None or ome_image.pixels.time_increment is None:
        return None
    unit = ome_image.pixels.time_increment_unit
    return ome_image.pixels.time_increment * _SECONDS[unit.value]


def _time(
    ome_image: Any, t: int, c: int, z: int, size_t: int, increment_s: float | None
) -> tuple[float, datetime | None]:
    """Hours of time point ``t`` since the image's start (its plane's ``DeltaT``, else ``t`` x
    ``increment_s``), and its absolute time if known."""
    seconds = _plane_seconds(ome_image, t, c, z) if ome_image is not None else None
    if seconds is None and increment_s is not None:
        seconds = t * increment_s
    if seconds is None:
        if size_t > 1:
            raise MicroscopyError(
                f"{size_t} time points but no Plane DeltaT, Pixels TimeIncrement or t-axis scale "
                "in the metadata"
            )
        seconds = 0.0
    start = ome_image.acquisition_date if ome_image is not None else None
    acquired = start.replace(tzinfo=None) + timedelta(seconds=seconds) if start else None
    return seconds / 3600.0, acquired


def _plane_seconds(ome_image: Any, t: int, c: int, z: int) -> float | None:
    """``DeltaT`` of plane (t, c, z), else of any plane of time point ``t``, in seconds."""
    timed = [p for p in ome_image.pixels.planes if p.the_t == t and p.delta_t is not None]
    timed.sort(key=lambda p: (p.the_c != c, p.the_z != z))
    if not timed:
        return None
    return timed[0].delta_t * _SECONDS[timed[0].delta_t_unit.value]
