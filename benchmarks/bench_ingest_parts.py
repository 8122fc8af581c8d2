"""CPU that ingest spends around mask + CCS, part by part, against baselines in the same run.

* Dask per task: instant tasks that return results shaped like ``extract_file``'s (20 patches of
  112 x 112 and their boxes) on ingest's own LocalCluster of 2 workers; CPU per image of the
  driver (scheduler, client) and of the workers, for 1, 4, 8 and 16 images per task.
* Slot writes: an image's 20 real patches written as one whole Zarr chunk by
  ``PatchStore.write_slot``, with Zarr's check for empty chunks (Zarr's default) and without it
  (the store's setting), in the order A B B A, against compressing the same block with the
  store's codec alone.

Every figure is CPU time of all threads, per image. Run:
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ingest_parts.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
from pathlib import Path

import numcodecs
import numpy as np
from distributed import as_completed
from shared_data import AZGCB

from clanet_store.imaging.decode import read_grey
from clanet_store.imaging.extract import extract, extractor_params
from clanet_store.pipelines.ingest import dask_client
from clanet_store.stores.patch_store import SLOT_SIZE, PatchStore


def cpu_seconds() -> float:
    """CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fake_results(n: int, patches: np.ndarray, boxes: np.ndarray) -> list[dict]:
    """What ``extract_files`` returns for n images, without the work (pickled by value)."""
    return [
        {
            "status": "ok",
            "content_hash": "0123456789abcdef",
            "patches": patches.copy(),
            "boxes": boxes.copy(),
            "confluency": 0.5,
            "mask_fraction": 0.4,
        }
        for _ in range(n)
    ]


def task_overhead(patches: np.ndarray, boxes: np.ndarray, images: int) -> dict[int, dict]:
    """Driver and worker CPU ms per image for several images per task, 6 tasks in flight."""
    out = {}
    with dask_client(2, None) as client:
        client.submit(fake_results, 1, patches, boxes).result()

        def workers_cpu() -> float:
            return sum(client.run(cpu_seconds).values())

        for per_task in (1, 4, 8, 16):
            driver, workers = cpu_seconds(), workers_cpu()
            sizes = [per_task] * (images // per_task)
            running = as_completed()
            for _ in range(min(6, len(sizes))):
                running.add(client.submit(fake_results, sizes.pop(), patches, boxes, pure=False))
            for future in running:
                future.result()
                future.release()
                if sizes:
                    running.add(
                        client.submit(fake_results, sizes.pop(), patches, boxes, pure=False)
                    )
            out[per_task] = {
                "driver_ms": (cpu_seconds() - driver) / images * 1e3,
                "workers_ms": (workers_cpu() - workers) / images * 1e3,
            }
    return out


def slot_writes(patches: np.ndarray, slots: int, tmp: Path) -> dict[str, float]:
    """CPU ms per slot write with and without Zarr's empty-chunk check, measured in the order
    A B B A (the first writes of a process cost more); and of the codec alone."""
    configs = {"empty check": {"write_empty_chunks": False}, "store": None}
    seconds = dict.fromkeys(configs, 0.0)
    for label in ("empty check", "store", "store", "empty check"):
        shutil.rmtree(tmp / "store", ignore_errors=True)
        store = PatchStore(tmp / "store", create=True, extractor=extractor_params())
        store.ensure_slots(slots + 1)
        if configs[label] is not None:  # Zarr's default, in place of the store's setting
            store._array = store.array.with_config(configs[label])
        store.write_slot(0, patches)
        start = cpu_seconds()
        for slot in range(1, slots + 1):
            store.write_slot(slot, patches)
        seconds[label] += cpu_seconds() - start
    out = {label: total / (2 * slots) * 1e3 for label, total in seconds.items()}
    block = np.zeros((SLOT_SIZE, *patches.shape[1:]), np.uint8)
    block[: len(patches)] = patches
    codec = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE)
    start = cpu_seconds()
    for _ in range(slots):
        codec.encode(block)
    out["codec alone"] = (cpu_seconds() - start) / slots * 1e3
    out["compression ratio"] = block.nbytes / len(codec.encode(block))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="images per task-size run")
    parser.add_argument("--slots", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    image = sorted(p for p in AZGCB.rglob("*") if p.suffix.lower() in (".jpg", ".tif"))[0]
    result = extract(read_grey(image))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}; patches of {image.name}: {len(result.patches)}"
    )
    tasks = task_overhead(result.patches, result.boxes, args.images)
    base = tasks[1]["driver_ms"] + tasks[1]["workers_ms"]
    for per_task, cpu in tasks.items():
        total = cpu["driver_ms"] + cpu["workers_ms"]
        print(
            f"dask, {per_task:2d} images per task: driver {cpu['driver_ms']:.2f} + workers "
            f"{cpu['workers_ms']:.2f} = {total:.2f} ms CPU per image "
            f"({total / base:.2f}x 1 per task)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        writes = slot_writes(result.patches, args.slots, Path(tmp))
    codec = writes["codec alone"]
    for label in ("empty check", "store"):
        print(
            f"slot write, {label:11}: {writes[label]:.2f} ms CPU per image "
            f"({writes[label] / codec:.1f}x the codec alone, {codec:.2f} ms; "
            f"ratio {writes['compression ratio']:.2f})"
        )
    if args.json:
        print(json.dumps({"tasks": tasks, "slot_writes": writes}, indent=2))


if __name__ == "__main__":
    main()
