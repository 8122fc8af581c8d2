"""Scan throughput on generated header-only exports, against baselines measured in the same run.

Writes N files (default 100,000) that hold only a JPEG header (SOI, JFIF APP0, SOF0 1408 x 1040,
EOI) under real-style names in ``<root>/<cell_line>/<batch>/``, then times, on one core:

* ``walk+read``: os.walk plus opening each file and reading 32 bytes (the I/O floor);
* ``PIL``: os.walk plus ``PIL.Image.open(path).size`` for every file (the obvious alternative);
* ``scan``: ``clanet_store.exports.scan.scan_export`` (parse names, read headers, build manifest).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scan.py [--files N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import tempfile
import time
from pathlib import Path

from PIL import Image

from clanet_store.exports.names import ImageName, format_name
from clanet_store.exports.scan import scan_export

_HEADER = (
    b"\xff\xd8"
    + b"\xff\xe0"
    + struct.pack(">H", 16)
    + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + b"\xff\xc0"
    + struct.pack(">HBHHB", 17, 8, 1040, 1408, 3)
    + bytes([1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1])
    + b"\xff\xd9"
)


def write_export(root: Path, n: int) -> None:
    """n header-only files: 20 lines x 5 batches x wells x 4 locations x time points."""
    per_folder = max(1, n // 100)
    written = 0
    for line in range(20):
        for batch in range(5):
            folder = root / f"Line {line:02d}" / f"B{batch}"
            folder.mkdir(parents=True)
            for i in range(min(per_folder, n - written)):
                well = "ABCDEFGH"[i % 8] + str(1 + (i // 8) % 12)
                name = ImageName(
                    prefix=f"VID{line}{batch}",
                    well=well,
                    location=1 + (i // 96) % 4,
                    elapsed_minutes=(i // 384) * 120,
                    ext="jpg",
                )
                (folder / format_name(name)).write_bytes(_HEADER)
            written += per_folder


def _walk(root: Path):
    for folder, _, files in os.walk(root):
        for f in files:
            yield os.path.join(folder, f)


def _walk_read(root: Path) -> int:
    count = 0
    for path in _walk(root):
        with open(path, "rb") as fh:
            fh.read(32)
        count += 1
    return count


def _pil(root: Path) -> int:
    count = 0
    for path in _walk(root):
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header read is the work being timed
        count += 1
    return count


def _scan(root: Path) -> int:
    return scan_export(root).manifest.height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        write_export(root, args.files)
        _walk_read(root)  # warm the page cache so every contender sees the same state
        results = {}
        for label, fn in (("walk+read", _walk_read), ("PIL", _pil), ("scan", _scan)):
            start = time.perf_counter()
            count = fn(root)
            seconds = time.perf_counter() - start
            results[label] = {"files": count, "seconds": seconds, "files_per_s": count / seconds}
    scan_rate = results["scan"]["files_per_s"]
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "results": results,
        "scan_vs_pil": scan_rate / results["PIL"]["files_per_s"],
        "scan_vs_walk_read": scan_rate / results["walk+read"]["files_per_s"],
        "paper_165190_images_s": 165_190 / scan_rate,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}, Python {report['python']}")
    for label, r in results.items():
        rate = r["files_per_s"]
        print(f"{label:>10}: {r['files']:>7} files in {r['seconds']:6.2f} s = {rate:8.0f} files/s")
    pil, floor = report["scan_vs_pil"], report["scan_vs_walk_read"]
    print(f"scan / PIL = {pil:.2f}x, scan / walk+read = {floor:.2f}x")
    print(f"projected scan of the paper's 165,190 images: {report['paper_165190_images_s']:.1f} s")


if __name__ == "__main__":
    main()
