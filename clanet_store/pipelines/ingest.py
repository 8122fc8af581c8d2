"""``ingest``: scan an export, mask + CCS on a Dask cluster, patches and rows into the store.

Data flow and guarantees:

* Dask workers only compute (read, hash, decode, mask, CCS) and return patches, a few images per
  task; the driver is the one writer. Workers therefore need to see the export files but never the
  store, so the same code runs on a ``LocalCluster`` or on a remote cluster (``scheduler``).
* Each image's patches go to its own slot, one whole Zarr chunk (``stores.patch_store``), written
  before any row refers to it. Rows are committed in groups: ``patches`` rows first, then the
  ``images`` row, which is the commit marker. ``recover`` deletes patch rows that no ``images`` row
  vouches for (a run killed between the two writes), so ``kill -9`` at any moment followed by the
  same command ends with the store a clean run produces.
* Incremental: an image whose size, mtime and extractor key (`ExtractorParams.key`: the version
  and the decode / overlay / mask / CCS parameters) match its row is skipped without reading it; one
  whose bytes hash to the stored hash is skipped after hashing; one whose content changed, or
  that was extracted with other parameters, is re-extracted and its old patch rows deleted.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import numpy as np
import polars as pl
from distributed import Client, LocalCluster, as_completed
from lancedb.expr import col

from clanet_store.errors import ClanetError
from clanet_store.exports.scan import scan_export, short_hash
from clanet_store.imaging.extract import extract_files, extractor_params
from clanet_store.imaging.params import (
    CCSParams,
    DecodeParams,
    ExtractorParams,
    MaskParams,
    OverlayParams,
    parse_params,
)
from clanet_store.progress import Progress
from clanet_store.stores import lance
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.lock import writer_lock
from clanet_store.stores.patch_store import SLOT_SIZE, PatchStore, check_creatable

FLUSH_IMAGES = 64
# Images per Dask task: each task costs the scheduler, the client and the worker's event loop a
# few ms of CPU, which on a 2-core machine mask + CCS pay for. Dask's CPU per image (driver and
# workers, instant tasks returning real-sized results; benchmarks/bench_ingest_parts.py, four
# runs): 11.7-16.6 ms with 1 image per task, 3.6-5.7 ms with 4, 2.5-3.7 ms with 8, 2.0-2.6 with 16.
TASK_IMAGES = 8
# The image's keys that every patch row (and every embedding row) repeats, for filtering.
IMAGE_KEYS = (
    "image_id",
    "cell_line",
    "batch",
    "experiment",
    "well",
    "location",
    "crop",
    "sequence_id",
    "timepoint_h",
)
FLUSH_SECONDS = 5.0
# Dask settings of the LocalCluster. distributed starts worker processes with
# MALLOC_TRIM_THRESHOLD_=65536, so glibc hands memory back to the OS after every large temporary:
# mask + CCS then ran 0.78 s instead of 0.49 s per image in a worker (measured); local workers
# start without it (remote ones: docs/ingest.md). The rest quiets background work none of which
# serves ingest: event-loop health ticks every 20 ms, the statistical profiler, system and memory
# monitors, work stealing (the driver feeds a short queue itself). An idle 2-worker cluster burnt
# 14 % of a core on them, 2 % with these settings (measured), CPU the workers need on a small
# machine.
_LOCAL_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.scheduler.work-stealing": False,
}

# Crash tests: ``CLANET_STORE_FAULT=<point>:<SIGNAL>`` signals the process at a named point of the
# writer (see `_fault_point`), so a test kills or interrupts it exactly there, never by timing.
FAULT_ENV = "CLANET_STORE_FAULT"
LOCALHOST = "127.0.0.1"


@dataclass
class IngestReport:
    """What one ingest run did (the JSON keys of ``clanet-store ingest --format json``)."""

    images_added: int = 0
    images_replaced: int = 0
    images_skipped: int = 0
    images_rejected: int = 0
    patches_added: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    workers: int = 0
    recovered_rows: int = 0
    fluorescence_ignored: int = 0  # raw-archive fluorescence images, not ingested
    rejects: list[dict] = field(default_factory=list)
    extractor_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Hide the caller's ``__main__`` while worker processes spawn: multiprocessing re-runs it in
    each of them, so a script that imports this module loaded LanceDB, Zarr and polars into every
    worker, and a 2-worker cluster started in 14-18 s instead of 2 s (measured, loaded machine).
    The task does not need it: it lives in ``imaging.extract``."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


@contextmanager
def dask_client(
    workers: int | None,
    scheduler: str | None,
    dashboard: bool = False,
    resources: dict[str, float] | None = None,
) -> Iterator[Client]:
    """A client on an existing scheduler, or on a LocalCluster of single-threaded processes.

    The local cluster listens on 127.0.0.1 only and serves Dask's dashboard only when asked
    (``dashboard``; port 8787 or a free one): its scheduler's HTTP server otherwise takes a free
    port, so two ingests never warn about port 8787. Its processes start with SIGINT ignored:
    Ctrl-C reaches the driver alone, which stops the cluster (no worker tracebacks). Each local
    worker holds ``resources`` (e.g. ``{"GPU": 1}``, which encode's tasks ask for on CUDA).
    """
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, ValueError) as exc:  # unreachable, or not an address
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ClanetError(f"{scheduler}: no Dask scheduler reachable ({reason})") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    http = {"dashboard": dashboard, "dashboard_address": f"{LOCALHOST}:{8787 if dashboard else 0}"}
    with dask.config.set(_LOCAL_CONFIG):
        with _main_script_hidden(), _sigint_ignored():
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host=LOCALHOST,
                dashboard_address=None,
                scheduler_kwargs=http,
                silence_logs=logging.ERROR,
                resources=resources,
            )
        with cluster, Client(cluster) as client:
            yield client


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while child processes start (they inherit it); the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fault_point(name: str) -> None:
    """Crash-test hook: with ``CLANET_STORE_FAULT=<name>:<SIGNAL>`` (e.g.
    ``after_patches_commit:SIGKILL``) the process sends itself SIGNAL here; SIGINT goes to its
    whole process group, as Ctrl-C in a terminal does. Unset, this does nothing."""
    point, _, signame = os.environ.get(FAULT_ENV, "").partition(":")
    if point != name:
        return
    signum = signal.Signals[signame]
    if signum == signal.SIGINT:
        os.killpg(os.getpgrp(), signum)
    else:
        os.kill(os.getpid(), signum)
    time.sleep(10)  # a handled signal raises in this thread before the sleep ends


def recover(store: PatchStore) -> int:
    """Delete patch rows (and any embeddings of them) that no ``images`` row vouches for (same
    content hash and slot: an image re-extracted with other parameters has the same hash, a new
    slot); return how many patch rows were deleted."""
    stale = store.uncommitted_patches()["patch_id"].to_list()
    store.delete_embeddings("patch_id", stale)
    return lance.delete_where_in(store.table("patches"), "patch_id", stale)


def _patch_rows(image: dict, result: dict, rows: np.ndarray, key: str) -> list[dict]:
    base = {k: image[k] for k in IMAGE_KEYS}
    out = []
    for box, row in zip(result["boxes"], rows, strict=True):
        x, y = int(box["x"]), int(box["y"])
        ident = f"{image['image_id']}|{result['content_hash']}|{x}|{y}|{key}"
        out.append(
            {
                **base,
                "patch_id": short_hash(ident),
                "content_hash": result["content_hash"],
                "rank": int(box["rank"]),
                "x": x,
                "y": y,
                "w": int(box["w"]),
                "h": int(box["h"]),
                "density": float(box["density"]),
                "row": int(row),
            }
        )
    return out


def _image_row(image: dict, status: str, key: str, **values: Any) -> dict:
    return {
        **image,
        "status": status,
        "error": None,
        "content_hash": None,
        "confluency": None,
        "mask_fraction": None,
        "patch_count": 0,
        "slot": None,
        "extractor_version": key,
        "ingested_at": datetime.now(UTC).replace(tzinfo=None),
        **values,
    }


def _plan(manifest: pl.DataFrame, existing: pl.DataFrame, key: str) -> tuple[pl.DataFrame, int]:
    """Manifest rows to (re)process, with the stored hash if any; and how many are skipped
    (images extracted with another extractor key are redone)."""
    current = existing.filter(pl.col("extractor_version") == key).select(
        "image_id",
        pl.col("file_size").alias("_size"),
        pl.col("mtime_ns").alias("_mtime"),
        pl.col("content_hash").alias("known_hash"),
        pl.col("status").alias("_status"),
    )
    joined = manifest.join(current, on="image_id", how="left")
    same_file = (pl.col("_size") == pl.col("file_size")) & (pl.col("_mtime") == pl.col("mtime_ns"))
    todo = joined.filter(~same_file.fill_null(False))
    known_ok = pl.when(pl.col("_status") == "ok").then(pl.col("known_hash"))
    todo = todo.with_columns(known_hash=known_ok).drop("_size", "_mtime", "_status")
    return todo, joined.height - todo.height


def ingest(
    export_root: str | Path,
    store_path: str | Path,
    plate_map: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    wait: bool = False,
    progress: Progress | None = None,
    commit_every: int = FLUSH_IMAGES,
    *,
    mask_params: MaskParams | dict | None = None,
    ccs_params: CCSParams | dict | None = None,
    decode_params: DecodeParams | dict | None = None,
    overlay_params: OverlayParams | dict | None = None,
    dashboard: bool = False,
) -> IngestReport:
    """Ingest an export into a store (created, under the writer lock, if the folder is new or
    empty); see the module docstring.

    ``mask_params`` / ``ccs_params`` / ``decode_params`` / ``overlay_params``: the method's
    numbers (`imaging.params` dataclasses or their dicts, e.g. a pipeline TOML's
    ``[ingest.mask]``); their record is kept in the Zarr array's attributes (``extractors``, by
    extractor key).
    """
    start = time.perf_counter()
    scan = scan_export(export_root, plate_map)
    params = parse_params(mask_params, ccs_params, decode_params, overlay_params)
    record = extractor_params(SLOT_SIZE, params=params)
    store_path = StoreLocation.parse(store_path)
    if not store_path.exists("store.json"):
        check_creatable(store_path)  # before the lock file is added to the folder
        if store_path.is_local:
            store_path.local_path.mkdir(parents=True, exist_ok=True)
    with writer_lock(store_path, wait=wait):
        store = PatchStore(store_path, create=True, extractor=record)
        store.record_export(export_root)
        known = dict(store.array.attrs.get("extractors", {}))
        if record["version"] not in known:
            store.array.attrs["extractors"] = {**known, record["version"]: record}
        writer = _Writer(store, commit_every, params, record["version"])
        writer.record_scan_rejects(scan.rejects)
        writer.report.fluorescence_ignored = scan.fluorescence_ignored
        todo, writer.report.images_skipped = _plan(scan.manifest, writer.existing, writer.key)
        writer.report.images_skipped += writer.scan_rejects_skipped
        if todo.height:
            writer.run(Path(export_root), todo, workers, scheduler, progress, dashboard)
        writer.finish()
    report = writer.report
    report.seconds = time.perf_counter() - start
    processed = report.images_added + report.images_replaced
    report.images_per_s = processed / report.seconds if report.seconds else 0.0
    return report


# What ingest needs to know of each stored image to skip, replace or re-extract it.
_EXISTING_COLUMNS = (
    "image_id",
    "path",
    "status",
    "error",
    "file_size",
    "mtime_ns",
    "content_hash",
    "extractor_version",
    "slot",
)


class _Writer:
    """The one writer: slots, Zarr writes, grouped row commits, recovery. Holds no Dask state."""

    def __init__(
        self,
        store: PatchStore,
        commit_every: int,
        params: ExtractorParams,
        key: str,
    ):
        self.store = store
        self.commit_every = commit_every
        self.params, self.key = params, key
        self.report = IngestReport(recovered_rows=recover(store), extractor_version=key)
        self.existing = store.query("images").select(*_EXISTING_COLUMNS).to_polars()
        used = self.existing["slot"].drop_nulls()
        self.next_slot = int(used.max()) + 1 if used.len() else 0
        self.stored_ok = set(self.existing.filter(pl.col("status") == "ok")["image_id"])
        self.images: list[dict] = []
        self.patches: list[dict] = []
        # Stored ok images whose old patches the pending images rows stop vouching for.
        self.unvouched: list[str] = []
        self.scan_rejects_skipped = 0

    def record_scan_rejects(self, rejects: pl.DataFrame) -> None:
        """Files the scan rejected (bad names, unreadable headers) become ``rejected`` rows."""
        known = set(
            self.existing.filter(pl.col("status") == "rejected").select("path", "error").iter_rows()
        )
        for path, reason in rejects.iter_rows():
            if (path, reason) in known:
                self.scan_rejects_skipped += 1
            else:
                self._reject({"image_id": short_hash(path), "path": path}, reason, None)
        self.flush()

    def run(
        self,
        root: Path,
        todo: pl.DataFrame,
        workers: int | None,
        scheduler: str | None,
        progress: Progress | None,
        dashboard: bool = False,
    ) -> None:
        """Map ``extract_file`` over ``todo`` on Dask, a bounded window of tasks in flight."""
        self.store.ensure_slots(self.next_slot + todo.height)
        images = todo.to_dicts()
        last_flush = time.monotonic()
        done = 0
        with dask_client(workers, scheduler, dashboard) as client:
            self.report.workers = len(client.scheduler_info()["workers"])
            queue = _task_batches(len(images), max(self.report.workers, 1))
            running = as_completed()
            owner: dict[Any, range] = {}

            def submit(batch: range) -> None:
                paths = [str(root / images[i]["path"]) for i in batch]
                hashes = [images[i]["known_hash"] for i in batch]
                future = client.submit(
                    extract_files, paths, hashes, SLOT_SIZE, self.params, pure=False
                )
                owner[future] = batch
                running.add(future)

            for batch in _take(queue, 2 * max(self.report.workers, 1) + 2):
                submit(batch)
            for future in running:
                for i, result in zip(owner.pop(future), future.result(), strict=True):
                    self.handle(images[i], result)
                    done += 1
                    if progress is not None:
                        progress("ingesting", done, len(images))
                future.release()
                for batch in _take(queue, 1):
                    submit(batch)
                if (
                    len(self.images) >= self.commit_every
                    or time.monotonic() - last_flush > FLUSH_SECONDS
                ):
                    self.flush()
                    last_flush = time.monotonic()
        self.flush()

    def handle(self, image: dict, result: dict) -> None:
        """Write one worker result: pixels now, rows at the next flush."""
        row = {k: v for k, v in image.items() if k != "known_hash"}
        if result["status"] == "unchanged":
            self.images.append(_image_row(row, "ok", self.key, **self._kept(image["image_id"])))
            return
        if result["status"] == "rejected":
            self._reject(row, result["error"], result.get("content_hash"))
            return
        slot = self.next_slot
        self.next_slot += 1
        rows = self.store.write_slot(slot, result["patches"])
        self.patches += _patch_rows(row, result, rows, self.key)
        self.images.append(
            _image_row(
                row,
                "ok",
                self.key,
                content_hash=result["content_hash"],
                confluency=result["confluency"],
                mask_fraction=result["mask_fraction"],
                patch_count=len(rows),
                slot=slot,
            )
        )
        if image["image_id"] in self.stored_ok:
            self.unvouched.append(image["image_id"])
            self.report.images_replaced += 1
        else:
            self.report.images_added += 1
        self.report.patches_added += len(rows)

    def _kept(self, image_id: str) -> dict:
        """The stored values of an unchanged image (only its size / mtime are refreshed)."""
        old = self.store.query("images").where(col("image_id") == image_id).to_polars()
        old = old.row(0, named=True)
        self.report.images_skipped += 1
        keep = ("content_hash", "confluency", "mask_fraction", "patch_count", "slot")
        return {k: old[k] for k in keep}

    def _reject(self, image: dict, reason: str, content_hash: str | None) -> None:
        if image["image_id"] in self.stored_ok:
            self.unvouched.append(image["image_id"])
        self.images.append(
            _image_row(image, "rejected", self.key, error=reason, content_hash=content_hash)
        )
        self.report.images_rejected += 1
        self.report.rejects.append({"path": image["path"], "reason": reason})

    def flush(self) -> None:
        """Commit pending rows: ``patches`` first, then the ``images`` rows that vouch for them.

        The embeddings of replaced or now-rejected images go before their images rows change:
        readers then never find an embedding whose patch is not committed.
        """
        if self.patches:
            self.store.table("patches").add(lance.to_arrow(self.patches, "patches"))
            _fault_point("after_patches_commit")
        self.store.delete_embeddings("image_id", self.unvouched)
        self.unvouched = []
        if self.images:
            lance.upsert(
                self.store.table("images"), lance.to_arrow(self.images, "images"), "image_id"
            )
        self.patches, self.images = [], []

    def finish(self) -> None:
        """Drop replaced patch rows, trim unused slots, compact the tables if anything changed."""
        r = self.report
        if r.images_replaced or r.images_rejected:
            recover(self.store)  # the old patch rows of re-extracted or now-rejected images
        used = self.store.query("images").select("slot").to_polars()["slot"].drop_nulls()
        self.store.ensure_slots(int(used.max()) + 1 if used.len() else 0)
        if r.images_added or r.images_replaced or r.images_rejected or r.recovered_rows:
            for name in ("images", "patches"):
                self.store.table(name).optimize()


def _task_batches(n: int, workers: int) -> Iterator[range]:
    """Image index ranges, one per Dask task: ``TASK_IMAGES`` images each, then single images for
    the last ``workers x TASK_IMAGES``, so that no worker idles long at the end while another
    finishes a batch."""
    tail = min(n, workers * TASK_IMAGES)
    for start in range(0, n - tail, TASK_IMAGES):
        yield range(start, min(start + TASK_IMAGES, n - tail))
    for i in range(n - tail, n):
        yield range(i, i + 1)


def _take(items: Iterator, n: int) -> list:
    return [item for _, item in zip(range(n), items, strict=False)]
