"""Exports as the ``scan`` and ``synth`` commands see them: a scanned manifest (written to
Parquet if asked) and a synthetic export, each as a typed result."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clanet_store.errors import ClanetError
from clanet_store.exports.scan import scan_export
from clanet_store.exports.summary import batch_summary, export_summary
from clanet_store.exports.synth import IMAGE_SIZE, synth_export
from clanet_store.progress import Progress
from clanet_store.stores.manifest import write_manifest


@dataclass(frozen=True)
class ScanReport:
    """What ``scan`` found: the totals (`exports.summary.export_summary`), the rejects and
    per-batch rows."""

    root: str
    totals: dict[str, Any]
    ignored: int
    cell_line_from_prefix: int
    fluorescence_ignored: int
    manifest: str | None
    batch_summary: list[dict[str, Any]]
    rejects: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            **self.totals,
            "rejected": len(self.rejects),
            "ignored": self.ignored,
            "cell_line_from_prefix": self.cell_line_from_prefix,
            "fluorescence_ignored": self.fluorescence_ignored,
            "manifest": self.manifest,
            "batch_summary": self.batch_summary,
            "rejects": self.rejects,
        }


def scan(
    export_root: Path,
    plate_map: Path | None = None,
    out: Path | None = None,
    progress: Progress | None = None,
) -> ScanReport:
    """Scan ``export_root`` (`exports.scan.scan_export`), the manifest written to ``out``."""
    seen = itertools.count(1)

    def on_file() -> None:
        if progress is not None:
            progress("scanning", next(seen), None)

    result = scan_export(export_root, plate_map, on_file=on_file)
    if out is not None:
        write_manifest(result.manifest, out)
    return ScanReport(
        root=str(export_root),
        totals=export_summary(result.manifest),
        ignored=result.ignored,
        cell_line_from_prefix=result.cell_line_from_prefix,
        fluorescence_ignored=result.fluorescence_ignored,
        manifest=None if out is None else str(out),
        batch_summary=batch_summary(result.manifest).to_dicts(),
        rejects=result.rejects.to_dicts(),
    )


@dataclass(frozen=True)
class SynthReport:
    """A synthetic export written by ``synth``: its sizes and one row per batch."""

    root: str
    cell_lines: int
    sequences: int
    images: int
    seed: int
    batches: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def synth(
    out: Path,
    lines: int,
    batches: int,
    positions: int,
    timepoints: int,
    seed: int,
    progress: Progress | None = None,
    batch_effects: float = 1.0,
    size: tuple[int, int] = IMAGE_SIZE,
) -> SynthReport:
    """Write a synthetic export (`exports.synth.synth_export`) into ``out``."""
    total = max(lines * batches * positions * timepoints, 0)
    done = itertools.count(1)

    def on_image(_: Path) -> None:
        if progress is not None:
            progress("rendering", next(done), total)

    try:
        result = synth_export(
            out, lines, batches, positions, timepoints, seed, on_image, batch_effects, size
        )
    except ValueError as exc:
        raise ClanetError(str(exc)) from None
    rows = [
        {
            "cell_line": line,
            "batch": b.name,
            "prefix": b.prefix,
            "interval_h": b.interval_h,
            "seeding_per_mm2": round(b.seeding_per_mm2),
            "start_h": round(b.start_min / 60, 2),
        }
        for line, styles in result.batches.items()
        for b in styles
    ]
    return SynthReport(
        str(result.root), len(result.lines), result.n_sequences, result.n_images, seed, rows
    )
