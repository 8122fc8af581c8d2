"""Discover the images of an Incucyte export and build its manifest (SPEC section 1).

Three layouts are accepted, per file, so they may even be mixed under one root:

* ``<root>/<cell_line>/<batch>/<files>``: cell line and batch from the folders;
* ``<root>/<cell_line>/<files>``: batch from the plate map, else from the experiment prefix;
* ``<root>/<files>`` plus a plate map CSV ``(experiment, well, cell_line, batch)``; a flat file
  without a plate-map entry takes both cell line and batch from its prefix (LIVECell and
  single-line exports name files after the cell line) and is counted in ``cell_line_from_prefix``.

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
from clanet_store.exports.headers import HeaderError, read_header
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
            if is_dir:
                stack.append((entry.path, (*parts, entry.name)))
            elif entry.name.lower().endswith(_IMAGE_SUFFIXES):
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
    from_prefix = 0
    for rel, parts in files:
        if on_file is not None:
            on_file()
        try:
            row = _image_row(str(root), rel, parts, plates)
        except (NameParseError, HeaderError, OSError, _Reject) as exc:
            rejects.append((rel, _reason(exc)))
            continue
        key = (row["sequence_id"], row["acquired_at"] or row["timepoint_h"])
        if key in seen:
            rejects.append((rel, f"same sequence and time point as {seen[key]}"))
            continue
        seen[key] = rel
        from_prefix += not parts and (row["experiment"], row["well"]) not in plates
        for name, value in row.items():
            rows[name].append(value)

    table = pa.Table.from_pydict(rows, schema=load_schema("manifest"))
    manifest = _relative_absolute_times(pl.from_arrow(table))
    reject_frame = pl.DataFrame(
        rejects, schema={"path": pl.String, "reason": pl.String}, orient="row"
    )
    return ScanResult(
        manifest=manifest,
        rejects=reject_frame,
        ignored=ignored,
        root=str(root),
        cell_line_from_prefix=from_prefix,
    )


class _Reject(Exception):
    """A file that parses but cannot be placed (layout or plate map)."""


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read file: {exc.strerror or exc}"
    prefix = "bad file name: " if isinstance(exc, NameParseError) else ""
    if isinstance(exc, HeaderError):
        prefix = "bad image header: "
    return prefix + str(exc)


def _image_row(
    root: str, rel: str, parts: tuple[str, ...], plates: dict[tuple[str, str], tuple[str, str]]
) -> dict:
    name = parse_name(rel.rsplit("/", 1)[-1])
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
    full = os.path.join(root, rel)
    header = read_header(full)
    stat = os.stat(full)
    return {
        "image_id": short_hash(rel),
        "path": rel,
        "cell_line": cell_line,
        "batch": batch,
        "experiment": name.prefix,
        "channel": name.channel,
        "well": name.well,
        "location": name.location,
        "crop": name.crop,
        "sequence_id": sequence_key(cell_line, batch, name.well, name.location, name.crop),
        "timepoint_h": name.timepoint_h if name.timepoint_h is not None else 0.0,
        "acquired_at": name.acquired_at,
        "format": header.format,
        "width": header.width,
        "height": header.height,
        "bits": header.bits,
        "channels": header.channels,
        "file_size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _relative_absolute_times(manifest: pl.DataFrame) -> pl.DataFrame:
    """Absolute stamps become hours since the first absolute stamp of the same batch."""
    first = pl.col("acquired_at").min().over(["cell_line", "batch"])
    hours = (pl.col("acquired_at") - first).dt.total_seconds() / 3600.0
    return manifest.with_columns(
        pl.when(pl.col("acquired_at").is_not_null())
        .then(hours)
        .otherwise(pl.col("timepoint_h"))
        .alias("timepoint_h")
    )
