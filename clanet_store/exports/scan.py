"""Discover the images of an Incucyte export and build its manifest (SPEC section 1).

Three layouts are accepted, per file, so they may even be mixed under one root:

* ``<root>/<cell_line>/<batch>/<files>``: cell line and batch from the folders;
* ``<root>/<cell_line>/<files>``: batch from the plate map, else from the experiment prefix;
* ``<root>/<files>`` plus a plate map CSV ``(experiment, well, cell_line, batch)``; a flat file
  without a plate-map entry takes both cell line and batch from its prefix (LIVECell and
  single-line exports name files after the cell line) and is counted in ``cell_line_from_prefix``;
* a raw Incucyte archive, ``.../ScanData/YYMM/DD/HHMM/<vessel>/<well>-<field>-<channel>.tif``
  (``exports.archive``; the root may be the archive, its ``ScanData`` folder or a folder above):
  time from the folders (hours since the vessel's first scan), cell line and batch from the plate
  map by vessel (its ``experiment`` column) and well; fluorescence channels are ignored and
  counted in ``fluorescence_ignored``.

The folder name is the truth for the cell line (real exports have folder ``HT 1080`` with files
``HT1080_...``). A file that does not parse, whose header cannot be read, that has no plate-map
or that repeats the time point of another file of its sequence is
rejected with the reason; it never stops the scan. So is a folder that cannot be read, or that
was seen before (a symlink loop): each folder is visited once, by device and inode. Hidden files
and files without an image extension are ignored and counted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from clanet_store.errors import ClanetError
from clanet_store.exports.archive import is_archive_path, parse_archive_path
from clanet_store.exports.headers import HeaderError, read_header
from clanet_store.exports.microscopy import PLUGINS, MicroscopyError, planes, suffix_of
from clanet_store.exports.names import EXTENSIONS, NameParseError, parse_name
from clanet_store.schemas import load_schema

PLATE_MAP_COLUMNS = ("experiment", "well", "cell_line", "batch")
_IMAGE_SUFFIXES = tuple("." + e for e in EXTENSIONS)


def short_hash(text: str) -> str:
    """First 16 hex digits of the SHA-1 of ``text``: a stable, compact id."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def sequence_key(cell_line: str, batch: str, well: str, location: int, crop: int | None) -> str:
    """The sequence id of (cell_line, batch, well, location, crop), a MIL bag."""
    return short_hash("\x1f".join((cell_line, batch, well, str(location), str(crop))))


@dataclass
class ScanResult:
    """The manifest (one row per accepted image), the rejects (path, reason), what was ignored."""

    manifest: pl.DataFrame
    rejects: pl.DataFrame
    ignored: int = 0
    root: str = ""
    cell_line_from_prefix: int = 0
    fluorescence_ignored: int = 0


def read_plate_map(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """Read a plate map CSV into ``{(experiment, well): (cell_line, batch)}``; clear errors."""
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ClanetError(f"{path}: cannot read plate map: {exc}") from None
    frame = frame.rename({c: c.strip().lower() for c in frame.columns})
    missing = [c for c in PLATE_MAP_COLUMNS if c not in frame.columns]
    if missing:
        raise ClanetError(
            f"{path}: plate map lacks column(s) {', '.join(missing)} "
            f"(needs {', '.join(PLATE_MAP_COLUMNS)})"
        )
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for i, row in enumerate(frame.select(PLATE_MAP_COLUMNS).iter_rows(), start=2):
        if any(v is None or not v.strip() for v in row):
            raise ClanetError(f"{path}: line {i} has an empty value")
        exp, well, line, batch = (v.strip() for v in row)
        if out.get((exp, well), (line, batch)) != (line, batch):
            raise ClanetError(f"{path}: line {i} gives experiment {exp} well {well} a second entry")
        out[(exp, well)] = (line, batch)
    return out


def _walk(root: str) -> tuple[list[tuple[str, tuple[str, ...]]], int, list[tuple[str, str]]]:
    """Image files under ``root`` as (relative path, folder parts); also the ignored count and
    the folders that could not be scanned, as (relative path + "/", reason) rejects.

    Each folder is visited once, by device and inode, so a symlink loop (or a second link to a
    folder) is a reject and never an endless walk; an unreadable folder is a reject too.
    """
    found: list[tuple[str, tuple[str, ...]]] = []
    rejects: list[tuple[str, str]] = []
    ignored = 0
    seen: dict[tuple[int, int], str] = {}
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    while stack:
        folder, parts = stack.pop()
        rel = "/".join(parts) + "/" if parts else "./"
        try:
            info = os.stat(folder)
            key = (info.st_dev, info.st_ino)
            if key in seen:
                rejects.append((rel, f"same folder as {seen[key]} (symlink loop?); not scanned"))
                continue
            seen[key] = rel
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            rejects.append((rel, f"cannot read folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                ignored += 1
                continue
            try:
                is_dir = entry.is_dir()
            except OSError as exc:
                rejects.append(("/".join((*parts, entry.name)), _reason(exc)))
                continue
            if is_dir and suffix_of(entry.name) is None:
                stack.append((entry.path, (*parts, entry.name)))
            elif entry.name.lower().endswith(_IMAGE_SUFFIXES) or suffix_of(entry.name):
                found.append(("/".join((*parts, entry.name)), parts))
            else:
                ignored += 1
    found.sort()
    rejects.sort()
    return found, ignored, rejects


def scan_export(
    root: str | Path,
    plate_map: str | Path | None = None,
    on_file: Callable[[], None] | None = None,
) -> ScanResult:
    """Scan an export root into a manifest; ``on_file`` is called once per image file seen."""
    root = Path(root)
    if not root.is_dir():
        raise ClanetError(f"{root}: export root does not exist or is not a folder")
    plates = read_plate_map(Path(plate_map)) if plate_map is not None else {}
    files, ignored, rejects = _walk(str(root))
    if not files:
        raise ClanetError(f"{root}: no image files ({', '.join(EXTENSIONS)}) found")

    rows: dict[str, list] = {f.name: [] for f in load_schema("manifest")}
    seen: dict[tuple[str, float], str] = {}
    from_prefix = fluorescence = 0
    archive: list[bool] = []
    for rel, parts in files:
        if on_file is not None:
            on_file()
        try:
            found, ignored_planes = _file_rows(str(root), rel, parts, plates)
        except (NameParseError, HeaderError, MicroscopyError, OSError, _Reject) as exc:
            rejects.append((rel, _reason(exc)))
            continue
        fluorescence += ignored_planes
        for row in found:
            key = (row["sequence_id"], row["acquired_at"] or row["timepoint_h"])
            if key in seen:
                rejects.append((row["path"], f"same sequence and time point as {seen[key]}"))
                continue
            seen[key] = row["path"]
            from_prefix += not parts and (row["experiment"], row["well"]) not in plates
            archive.append(is_archive_path(parts, root.name))
            for name, value in row.items():
                rows[name].append(value)

    table = pa.Table.from_pydict(rows, schema=load_schema("manifest"))
    manifest = _relative_absolute_times(pl.from_arrow(table), archive)
    reject_frame = pl.DataFrame(
        rejects, schema={"path": pl.String, "reason": pl.String}, orient="row"
    )
    return ScanResult(
        manifest=manifest,
        rejects=reject_frame,
        ignored=ignored,
        root=str(root),
        cell_line_from_prefix=from_prefix,
        fluorescence_ignored=fluorescence,
    )


class _Reject(Exception):
    """A file that parses but cannot be placed (layout or plate map)."""


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read file: {exc.strerror or exc}"
    prefix = "bad file name: " if isinstance(exc, NameParseError) else ""
    if isinstance(exc, HeaderError):
        prefix = "bad image header: "
    if isinstance(exc, MicroscopyError):
        prefix = "bad microscopy file: "
    return prefix + str(exc)


def _file_rows(
    root: str, rel: str, parts: tuple[str, ...], plates: dict[tuple[str, str], tuple[str, str]]
) -> tuple[list[dict], int]:
    """The manifest rows of one file (a microscopy file gives one per scene and time point) and
    how many fluorescence images it holds (ignored)."""
    name = rel.rsplit("/", 1)[-1]
    full = os.path.join(root, rel)
    if suffix_of(name) is not None:
        return _microscopy_rows(full, rel, plates)
    if is_archive_path(parts, os.path.basename(root)):
        keys = _archive_keys(os.path.basename(root), name, parts, plates)
        if keys is None:
            return [], 1
    else:
        keys = _export_keys(name, parts, plates)
    header = read_header(full)
    size = (header.format, header.width, header.height, header.bits, header.channels)
    return [_row(full, rel, keys, *size)], 0


def _row(
    full: str, rel: str, keys: dict, kind: str, width: int, height: int, bits: int, channels: int
) -> dict:
    """A manifest row: the image's keys, its size and the file's size and mtime."""
    stat = os.stat(full)
    sequence = (keys["cell_line"], keys["batch"], keys["well"], keys["location"], keys["crop"])
    return {
        "image_id": short_hash(rel),
        "path": rel,
        **keys,
        "sequence_id": sequence_key(*sequence),
        "format": kind,
        "width": width,
        "height": height,
        "bits": bits,
        "channels": channels,
        "file_size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _microscopy_rows(
    full: str, rel: str, plates: dict[tuple[str, str], tuple[str, str]]
) -> tuple[list[dict], int]:
    """One row per plane a microscopy file gives (``exports.microscopy``); cell line and batch
    from the plate map by (experiment, well)."""
    found, ignored = planes(full, rel)
    kind = PLUGINS[suffix_of(rel)][0]
    rows = []
    for plane in found:
        plate = plates.get((plane.experiment, plane.well))
        if plate is None:
            raise _Reject(f"no plate-map entry for experiment {plane.experiment} well {plane.well}")
        keys = {
            "cell_line": plate[0],
            "batch": plate[1],
            "experiment": plane.experiment,
            "channel": plane.channel,
            "well": plane.well,
            "location": plane.location,
            "crop": None,
            "timepoint_h": plane.timepoint_h,
            "acquired_at": plane.acquired_at,
        }
        rows.append(_row(full, plane.ref, keys, kind, plane.width, plane.height, plane.bits, 1))
    return rows, ignored


def _export_keys(
    file_name: str, parts: tuple[str, ...], plates: dict[tuple[str, str], tuple[str, str]]
) -> dict:
    """An export file's keys: its name, its folders and the plate map (module docstring)."""
    name = parse_name(file_name)
    plate = plates.get((name.prefix, name.well))
    if len(parts) > 2:
        raise _Reject("nested deeper than <root>/<cell_line>/<batch>/")
    if len(parts) == 0:
        # Flat file: the plate map places it; without an entry the prefix names both cell line
        # and batch (LIVECell and many single-line exports name files after the cell line).
        cell_line, batch = plate if plate is not None else (name.prefix, name.prefix)
    else:
        cell_line = parts[0]
        batch = parts[1] if len(parts) == 2 else (plate[1] if plate else name.prefix)
    return {
        "cell_line": cell_line,
        "batch": batch,
        "experiment": name.prefix,
        "channel": name.channel,
        "well": name.well,
        "location": name.location,
        "crop": name.crop,
        "timepoint_h": name.timepoint_h if name.timepoint_h is not None else 0.0,
        "acquired_at": name.acquired_at,
    }


def _archive_keys(
    root_name: str,
    file_name: str,
    parts: tuple[str, ...],
    plates: dict[tuple[str, str], tuple[str, str]],
) -> dict | None:
    """An archive image's keys: time and vessel from its folders, cell line and batch from the
    plate map by vessel and well (hours since the vessel's first scan are set per manifest);
    None for a fluorescence image."""
    image = parse_archive_path(parts, file_name, root_name)
    if image.fluorescence:
        return None
    plate = plates.get((image.vessel, image.well))
    if plate is None:
        raise _Reject(f"no plate-map entry for vessel {image.vessel} well {image.well}")
    return {
        "cell_line": plate[0],
        "batch": plate[1],
        "experiment": image.vessel,
        "channel": image.channel,
        "well": image.well,
        "location": image.location,
        "crop": None,
        "timepoint_h": 0.0,
        "acquired_at": image.acquired_at,
    }


def _relative_absolute_times(manifest: pl.DataFrame, archive: list[bool]) -> pl.DataFrame:
    """Absolute stamps become hours since the first absolute stamp of the same batch, or for
    archive images (``archive``, per row) since the first scan of the same vessel."""
    group = (
        pl.when(pl.Series(archive, dtype=pl.Boolean))
        .then(pl.concat_str(pl.lit("vessel"), pl.col("experiment"), separator="\x1f"))
        .otherwise(
            pl.concat_str(pl.lit("batch"), pl.col("cell_line"), pl.col("batch"), separator="\x1f")
        )
    )
    first = pl.col("acquired_at").min().over(group)
    hours = (pl.col("acquired_at") - first).dt.total_seconds() / 3600.0
    return manifest.with_columns(
        pl.when(pl.col("acquired_at").is_not_null())
        .then(hours)
        .otherwise(pl.col("timepoint_h"))
        .alias("timepoint_h")
    )
