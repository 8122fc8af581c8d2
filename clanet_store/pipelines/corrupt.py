"""``corrupt``: a corrupted copy of an export (same folder layout and file names), so the copy
scans and ingests like the original; the corruptions themselves are ``qc.corrupt`` (SPEC 8)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from clanet_store.errors import ClanetError
from clanet_store.exports.scan import scan_export
from clanet_store.imaging.decode import read_grey
from clanet_store.progress import Progress
from clanet_store.qc.corrupt import corrupt, corruption_parameter

JPEG_QUALITY = 95


@dataclass(frozen=True)
class CorruptReport:
    """What ``corrupt_export`` wrote: ``skipped`` lists the files the scan rejected (path,
    reason), which are not copied; ``direction`` is None for defocus."""

    export: str
    out: str
    kind: str
    severity: int
    direction: str | None
    parameter: float
    images_written: int
    skipped: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def corrupt_export(
    root: str | Path,
    out: str | Path,
    kind: str,
    severity: int,
    direction: str = "down",
    progress: Progress | None = None,
) -> CorruptReport:
    """Write a corrupted copy of the export at ``root`` into ``out`` (new or empty folder).

    Every image the scan accepts is decoded as ingest does (8-bit grey at working scale), corrupted
    and written under the same relative path in the same format (grey; JPEG at quality 95); files
    the scan rejects are not copied and are listed in the result.
    """
    root, out = Path(root), Path(out)
    try:
        parameter = corruption_parameter(kind, severity, direction)
    except ValueError as exc:
        raise ClanetError(str(exc)) from None
    if out.resolve().is_relative_to(root.resolve()):
        raise ClanetError(f"{out}: the output folder must not be inside the export {root}")
    if out.exists() and any(out.iterdir()):
        raise ClanetError(f"{out}: output folder exists and is not empty")
    scan = scan_export(root)
    paths = scan.manifest["path"].to_list()
    for done, rel in enumerate(paths, start=1):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(corrupt(read_grey(root / rel), kind, severity, direction), mode="L")
        jpeg = target.suffix.lower() in (".jpg", ".jpeg")
        image.save(target, **({"quality": JPEG_QUALITY} if jpeg else {}))
        if progress is not None:
            progress("corrupting", done, len(paths))
    return CorruptReport(
        export=str(root),
        out=str(out),
        kind=kind,
        severity=severity,
        direction=None if kind == "defocus" else direction,
        parameter=parameter,
        images_written=len(paths),
        skipped=scan.rejects.to_dicts(),
    )
