"""Mask + CCS time per real image, against a straightforward SPEC-2 mask measured in the same run.

For every image of ``../shared/data/azgcb_sample`` (1408 x 1040 Incucyte JPEGs), decoded once and
not timed, on one core:

* ``overlays``: ``find_overlays`` + ``exclusion_mask`` (burned-in scale bar and time stamp);
* ``mask``: ``brightfield_mask`` (SPEC 2, exact, fast);
* ``ccs``: ``select_patches`` (SPEC 3, top 20 boxes);
* ``total``: the three together, what ``extract`` spends before cropping the patches;
* ``canny (in mask)``: ``mask.canny`` alone on the same stretched image, timed again apart (its
  share of ``mask``, not added to ``total``);
* ``straightforward mask``: SPEC 2 written directly with scipy / scikit-image
  (``tests/test_imaging_mask.straightforward_mask``: float percentiles and Otsu, skimage Canny,
  ``binary_fill_holes`` in every iteration), on the same image and exclusion; the run also checks
  that both masks are identical.

Wall-clock and CPU (``time.process_time``) seconds are both reported: on a shared machine other
processes stretch the wall clock, the CPU time less so.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ccs.py [--limit N] [--json]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, set before numpy starts its pools

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from shared_data import AZGCB

from clanet_store.imaging.ccs import select_patches
from clanet_store.imaging.decode import read_grey
from clanet_store.imaging.mask import brightfield_mask, canny, stretch_lut
from clanet_store.imaging.overlays import exclusion_mask, find_overlays

REPO = Path(__file__).resolve().parents[1]


def _straightforward_mask():
    """The baseline lives with the tests that prove it equal to ``brightfield_mask``."""
    path = REPO / "tests" / "test_imaging_mask.py"
    spec = importlib.util.spec_from_file_location("test_imaging_mask", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.straightforward_mask


straightforward_mask = _straightforward_mask()
STEPS = ("overlays", "mask", "ccs", "total", "canny (in mask)", "straightforward mask")


class Clock:
    """Wall-clock and CPU seconds since the last ``lap``."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def time_image(grey: np.ndarray) -> tuple[dict[str, tuple[float, float]], bool]:
    """(wall, CPU) seconds of each step on one image, and whether the two masks agree."""
    clock = Clock()
    exclude = exclusion_mask(grey.shape, find_overlays(grey))
    overlays = clock.lap()
    mask = brightfield_mask(grey, exclude)
    masking = clock.lap()
    select_patches(grey, mask, exclude=exclude)
    ccs = clock.lap()
    stretched = np.take(stretch_lut(np.bincount(grey[~exclude], minlength=256)), grey)
    clock.lap()
    canny(stretched, ~exclude)
    edges = clock.lap()
    reference = straightforward_mask(grey, exclude)
    straightforward = clock.lap()
    seconds = {
        "overlays": overlays,
        "mask": masking,
        "ccs": ccs,
        "total": tuple(a + b + c for a, b, c in zip(overlays, masking, ccs, strict=True)),
        "canny (in mask)": edges,
        "straightforward mask": straightforward,
    }
    return seconds, bool(np.array_equal(mask, reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=AZGCB)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    paths = sorted(args.data.glob("*/*.jpg"))[: args.limit or None]
    if not paths:
        sys.exit(f"no images under {args.data}")
    time_image(read_grey(paths[0]))  # warm-up: imports, caches
    runs, identical = [], 0
    for path in paths:
        seconds, same = time_image(read_grey(path))
        runs.append(seconds)
        identical += same
    table = {
        step: {
            f"{stat}_{kind}_s": float(fn([r[step][column] for r in runs]))
            for column, kind in enumerate(("wall", "cpu"))
            for stat, fn in (("median", np.median), ("p90", lambda v: np.percentile(v, 90)))
        }
        for step in STEPS
    }
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "omp_num_threads": os.environ["OMP_NUM_THREADS"],
        "images": len(paths),
        "identical_masks": identical,
        "steps": table,
        "load_average": os.getloadavg(),
        "mask_speedup": table["straightforward mask"]["median_wall_s"]
        / table["mask"]["median_wall_s"],
        "total_over_straightforward_mask": table["total"]["median_wall_s"]
        / table["straightforward mask"]["median_wall_s"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}, Python {report['python']}, one core")
    print(f"{len(paths)} images of {args.data.name} (1408 x 1040), seconds per image")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in report['load_average'])}")
    print(f"{'':<22}{'wall':>18}{'CPU':>18}")
    print(f"{'step':<22}" + f"{'median':>9}{'p90':>9}" * 2)
    for step, row in table.items():
        print(
            f"{step:<22}{row['median_wall_s']:>9.3f}{row['p90_wall_s']:>9.3f}"
            f"{row['median_cpu_s']:>9.3f}{row['p90_cpu_s']:>9.3f}"
        )
    print(f"mask speed-up over the straightforward mask (wall): {report['mask_speedup']:.1f}x")
    print(
        "mask + CCS + overlays / straightforward mask alone (wall): "
        f"{report['total_over_straightforward_mask']:.2f}"
    )
    print(f"identical masks: {identical} / {len(paths)}")


if __name__ == "__main__":
    main()
