"""Ingest throughput with 1 and 2 Dask workers against bare mask + CCS, measured in one run.

For each image set (the real azgcb_sample repeated to >= 200 images, and a synthetic export),
every round measures:

* ``bare 1``: ``extract(read_grey(path))`` over every image in one fresh process (the baseline:
  what a worker does, without Dask or the store);
* ``bare 2``: the same images split over two fresh processes running at once: what this
  machine's two cores give two independent loops (the ceiling of any 2-worker speed-up here);
* ``ingest w=1`` and ``ingest w=2``: ``clanet-store ingest`` into a fresh store with a LocalCluster
  of 1 or 2 single-threaded workers, end to end (scan, cluster start-up, extraction, Zarr and
  LanceDB writes, shutdown, compaction) and in the steady state (first task's images written to
  the last image, every store write included; start-up, shutdown and compaction not).

Bare loops load numba's compiled kernels on one image before their clocks start.
Targets (issue 4): 2 workers >= 1.7x one worker; 1 worker >= 0.9x bare (store writes cost
<= 10 %). The CPU time per image (all processes) is printed too.

This machine's speed drifts by tens of percent within a minute (KVM, steal time), so one round's
ratio mixes the drift with the speed-up. Rounds therefore alternate the order (bare 1, bare 2,
w=1, w=2, then w=2, w=1, bare 2, bare 1, ...) and the summary pools them: a measurement's rate
over all rounds is its total images over its total seconds, so a linear drift over two rounds
cancels out of the ratios. Use an even ``--rounds``.
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ingest.py [--copies 3] [--rounds 4]
[--json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from shared_data import AZGCB

from clanet_store.exports.scan import scan_export
from clanet_store.exports.synth import synth_export
from clanet_store.imaging.decode import read_grey
from clanet_store.imaging.extract import extract
from clanet_store.pipelines.ingest import TASK_IMAGES, ingest

MEASUREMENTS = ("bare1", "bare2", "w1", "w2")


def real_export(dest: Path, copies: int) -> Path:
    """The real sample, ``copies`` times, as cell-line folders ``<line> r<i>`` (symlinked files)."""
    for i in range(copies):
        for line in sorted(p for p in AZGCB.iterdir() if p.is_dir()):
            folder = dest / f"{line.name} r{i}"
            folder.mkdir(parents=True)
            for f in line.iterdir():
                (folder / f.name).symlink_to(f)
    return dest


def cpu_seconds() -> float:
    """CPU time of this process and of its ended children (the workers of a closed cluster)."""
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _bare_loop(paths: list[str], ready: Barrier, results: Queue) -> None:
    """One bare process: load the kernels, wait for the others, time the loop."""
    extract(read_grey(paths[0]))
    ready.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        extract(read_grey(path))
    results.put((start, time.perf_counter(), time.process_time() - cpu))


def bare(paths: list[str], processes: int) -> dict:
    """Images per second of ``processes`` fresh bare loops over ``paths`` split between them,
    from the first loop's start to the last one's end; CPU seconds summed."""
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_bare_loop, args=(paths[i::processes], ready, results))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    spans = [results.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = max(s[1] for s in spans) - min(s[0] for s in spans)
    return {"images": len(paths), "seconds": seconds, "cpu": sum(s[2] for s in spans)}


def ingest_run(root: Path, workers: int, tmp: Path) -> dict:
    """One ingest into a fresh store: seconds end to end and in the steady state (from the first
    task's images written to the last image, from the progress callback's time stamps)."""
    store = tmp / f"store-w{workers}"
    shutil.rmtree(store, ignore_errors=True)
    stamps: list[float] = []
    start, cpu = time.perf_counter(), cpu_seconds()
    report = ingest(
        root, store, workers=workers, progress=lambda *_: stamps.append(time.perf_counter())
    )
    first = TASK_IMAGES - 1  # a task's images are written together
    return {
        "images": report.images_added,
        "seconds": time.perf_counter() - start,
        "cpu": cpu_seconds() - cpu,
        "steady_images": len(stamps) - 1 - first,
        "steady_seconds": stamps[-1] - stamps[first],
    }


def one_round(root: Path, paths: list[str], tmp: Path, order: tuple[str, ...]) -> dict:
    """Each measurement once, in ``order``."""
    run = {
        "bare1": lambda: bare(paths, 1),
        "bare2": lambda: bare(paths, 2),
        "w1": lambda: ingest_run(root, 1, tmp),
        "w2": lambda: ingest_run(root, 2, tmp),
    }
    return {name: run[name]() for name in order}


def pooled(runs: list[dict]) -> dict:
    """Sums of images, seconds and CPU over runs of one measurement."""
    return {key: sum(r[key] for r in runs) for key in runs[0]}


def rates(m: dict) -> dict:
    """Rates (images per second), CPU ms per image and the target ratios of one round or pool."""

    def rate(x: dict, steady: bool = False) -> float:
        return x["steady_images"] / x["steady_seconds"] if steady else x["images"] / x["seconds"]

    out = {f"{name}_img_s": rate(m[name]) for name in MEASUREMENTS}
    out |= {f"{w}_steady_img_s": rate(m[w], steady=True) for w in ("w1", "w2")}
    out |= {f"{name}_cpu_ms": m[name]["cpu"] / m[name]["images"] * 1e3 for name in MEASUREMENTS}
    out["bare2_vs_bare1"] = out["bare2_img_s"] / out["bare1_img_s"]
    out["w2_vs_w1"] = out["w2_img_s"] / out["w1_img_s"]
    out["w1_vs_bare1"] = out["w1_img_s"] / out["bare1_img_s"]
    out["steady_w2_vs_w1"] = out["w2_steady_img_s"] / out["w1_steady_img_s"]
    out["steady_w1_vs_bare1"] = out["w1_steady_img_s"] / out["bare1_img_s"]
    return out


def show(label: str, images: int, r: dict) -> None:
    print(
        f"{label:>22}: {images} images | bare: 1 process {r['bare1_img_s']:.2f} img/s, 2 processes "
        f"{r['bare2_img_s']:.2f} img/s ({r['bare2_vs_bare1']:.2f}x) | end to end: 1 worker "
        f"{r['w1_img_s']:.2f} img/s ({r['w1_vs_bare1']:.2f}x bare), 2 workers "
        f"{r['w2_img_s']:.2f} img/s ({r['w2_vs_w1']:.2f}x 1 worker) | steady state: 1 worker "
        f"{r['w1_steady_img_s']:.2f} img/s ({r['steady_w1_vs_bare1']:.2f}x bare), 2 workers "
        f"{r['w2_steady_img_s']:.2f} img/s ({r['steady_w2_vs_w1']:.2f}x 1 worker) | CPU ms per "
        f"image: bare {r['bare1_cpu_ms']:.0f}/{r['bare2_cpu_ms']:.0f}, ingest "
        f"{r['w1_cpu_ms']:.0f}/{r['w2_cpu_ms']:.0f} | load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def measure(label: str, root: Path, tmp: Path, rounds: int) -> dict:
    """``rounds`` rounds, order reversed every other round, then all rounds pooled."""
    paths = [str(root / p) for p in scan_export(root).manifest["path"]]
    runs = []
    for r in range(rounds):
        order = MEASUREMENTS if r % 2 == 0 else MEASUREMENTS[::-1]
        runs.append(one_round(root, paths, tmp, order))
        show(f"{label} round {r + 1}", len(paths), rates(runs[-1]))
    pool = rates({name: pooled([run[name] for run in runs]) for name in MEASUREMENTS})
    show(f"{label} all {rounds} rounds", len(paths), pool)
    return {"images": len(paths), "rounds": [rates(run) for run in runs], "pooled": pool}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="repeats of the 72 real images")
    parser.add_argument("--synth-positions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (even)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "python": platform.python_version(),
    }
    print(f"machine: {results['machine']}, Python {results['python']}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["real"] = measure("real", real_export(tmp / "real", args.copies), tmp, args.rounds)
        synth = tmp / "synth"
        synth_export(
            synth, lines=4, batches=2, positions=args.synth_positions, timepoints=5, seed=1
        )
        results["synthetic"] = measure("synthetic", synth, tmp, args.rounds)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
