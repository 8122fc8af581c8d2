"""Ingest on real LanceDB, Zarr v3 and Dask distributed: counts, pixels, idempotence, bad input,
crash safety (SIGKILL), the single-writer lock, store versions and an external scheduler."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
import zarr
from dask_processes import dask_processes

from clanet_store.errors import ClanetError
from clanet_store.exports.scan import scan_export
from clanet_store.imaging.decode import read_grey
from clanet_store.pipelines.ingest import (
    TASK_IMAGES,
    _main_script_hidden,
    _task_batches,
    ingest,
)
from clanet_store.schemas import load_schema
from clanet_store.stores.lock import StoreBusyError, writer_lock
from clanet_store.stores.patch_store import PatchStore, StoreVersionError

BIN = Path(sys.executable).parent
SUBSET = ("A431", "BT474", "HCC 2279")  # 17 real images, 3 cell lines


def _copy_subset(shared_data: Path, dest: Path, lines=SUBSET) -> Path:
    for line in lines:
        shutil.copytree(shared_data / "azgcb_sample" / line, dest / line)
    return dest


def _crop_check(store: PatchStore, root: Path, n_images: int = 4) -> None:
    """Stored pixels equal the crops of the source image at the recorded boxes."""
    images = (
        store.query("images")
        .to_polars()
        .filter(pl.col("status") == "ok")
        .sort("path")
        .head(n_images)
    )
    patches = store.query("patches").to_polars()
    for image in images.iter_rows(named=True):
        grey = read_grey(root / image["path"])
        mine = patches.filter(pl.col("image_id") == image["image_id"]).sort("rank")
        assert mine.height == image["patch_count"] > 0
        pixels = store.pixels(mine["patch_id"].to_list())
        for box, px in zip(mine.iter_rows(named=True), pixels, strict=True):
            assert (box["w"], box["h"]) == (112, 112)
            np.testing.assert_array_equal(
                px, grey[box["y"] : box["y"] + 112, box["x"] : box["x"] + 112]
            )


def _snapshot(store_path: Path) -> dict[str, bytes]:
    """patch_id -> pixels, plus the image rows that matter, for comparing two stores."""
    store = PatchStore(store_path)
    table = store.query("patches").select("patch_id", "row").to_polars()
    assert table["patch_id"].n_unique() == table.height, "duplicate patch rows"
    pixels = store.read_rows(table["row"].to_numpy())
    return {pid: px.tobytes() for pid, px in zip(table["patch_id"], pixels, strict=True)}


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("real") / "store"
    report = ingest(shared_data / "azgcb_sample", path, workers=2)
    return path, report


@pytest.mark.realdata
def test_real_export_counts_match_scan_and_pixels_match_source(real_store, shared_data):
    path, report = real_store
    scan = scan_export(shared_data / "azgcb_sample")
    store = PatchStore(path)
    images = store.query("images").to_polars()
    assert report.images_added == scan.manifest.height == 72
    assert report.images_rejected == 0 and report.workers == 2
    assert set(images["image_id"]) == set(scan.manifest["image_id"])
    assert (images["status"] == "ok").all()
    patches = store.query("patches").to_polars()
    assert patches.height == report.patches_added == images["patch_count"].cast(int).sum()
    assert patches["patch_id"].n_unique() == patches.height
    per_image = patches.group_by("image_id").agg(pl.col("rank").sort())
    assert all(r == list(range(len(r))) for r in per_image["rank"].to_list())
    _crop_check(store, shared_data / "azgcb_sample", n_images=6)


@pytest.mark.realdata
def test_store_layout_is_plain_zarr_and_schema_tables(real_store):
    path, _ = real_store
    arr = zarr.open_array(str(path / "patches.zarr"), mode="r")
    assert arr.dtype == np.uint8 and arr.shape[1:] == (112, 112)
    assert arr.chunks == (20, 112, 112)
    assert arr.metadata.dimension_names == ("patch", "y", "x")
    assert arr.attrs["pixel_size_um"] == 1.24 and arr.attrs["extractor"]["version"]
    store = PatchStore(path)
    for name in ("images", "patches"):
        expected = load_schema(name)
        actual = store.table(name).schema
        assert [(f.name, f.type) for f in actual] == [(f.name, f.type) for f in expected]


@pytest.mark.realdata
def test_reingest_adds_nothing(real_store, shared_data):
    path, _ = real_store
    before = _snapshot(path)
    again = ingest(shared_data / "azgcb_sample", path, workers=1)
    assert (again.images_added, again.images_skipped, again.patches_added) == (0, 72, 0)
    assert _snapshot(path) == before


@pytest.mark.realdata
def test_incremental_changed_and_bad_files(tmp_path, shared_data):
    root = _copy_subset(shared_data, tmp_path / "export", lines=SUBSET[:2])
    store_path = tmp_path / "store"
    first = ingest(root, store_path, workers=1)
    assert first.images_added == 14
    # a new batch of files, a changed file, and bad input of three kinds
    _copy_subset(shared_data, root, lines=SUBSET[2:])
    changed = root / "A431" / "A431_B1_1_00d00h00m.jpg"
    changed.write_bytes((root / "A431" / "A431_C6_1_04d00h00m.jpg").read_bytes())
    (root / "A431" / "A431_B1_1_09d00h00m.jpg").write_bytes(changed.read_bytes()[:5000])
    tif = root / "BT474" / "BT474_B1_1_09d00h00m.tif"
    tifffile.imwrite(tif, np.zeros((520, 704), np.uint16))
    tif.write_bytes(tif.read_bytes()[:2000])
    (root / "BT474" / "not a valid name.jpg").write_bytes(changed.read_bytes())
    store = PatchStore(store_path)
    old_ids = set(store.query("patches").to_polars()["image_id"])
    second = ingest(root, store_path, workers=2)
    assert second.images_added == 3  # HCC 2279
    assert second.images_replaced == 1
    assert second.images_rejected == 3
    reasons = {r["path"]: r["reason"] for r in second.rejects}
    assert "A431/A431_B1_1_09d00h00m.jpg" in reasons
    assert "BT474/BT474_B1_1_09d00h00m.tif" in reasons
    assert "bad file name" in reasons["BT474/not a valid name.jpg"]
    assert all(reasons.values())
    images = store.query("images").to_polars()
    assert images.height == 14 + 3 + 3
    assert set(images.filter(pl.col("status") == "rejected")["path"]) == set(reasons)
    # the changed image now has the patches of its new content, and no stale rows remain
    cid = images.filter(pl.col("path") == "A431/A431_B1_1_00d00h00m.jpg").row(0, named=True)
    mine = store.query("patches").to_polars().filter(pl.col("image_id") == cid["image_id"])
    assert set(mine["content_hash"]) == {cid["content_hash"]}
    assert mine.height == cid["patch_count"]
    assert store.query("patches").to_polars().height == images["patch_count"].cast(int).sum()
    assert old_ids <= set(store.query("patches").to_polars()["image_id"])
    _crop_check(store, root, n_images=20)
    third = ingest(root, store_path, workers=1)
    assert (third.images_added, third.images_replaced, third.images_rejected) == (0, 0, 0)
    assert third.images_skipped == 20


@pytest.mark.realdata
def test_sigkill_then_rerun_equals_clean_run(tmp_path, shared_data):
    root = _copy_subset(shared_data, tmp_path / "export")
    clean = tmp_path / "clean"
    ingest(root, clean, workers=1)
    crashed = tmp_path / "crashed"
    cmd = [
        str(BIN / "clanet-store"),
        "ingest",
        str(root),
        "--store",
        str(crashed),
        "--workers",
        "1",
        "--commit-every",
        "2",
    ]
    for delay in (None, 1.0):  # after the first commits; then early in the resumed run
        proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.DEVNULL)
        try:
            if delay is None:
                _wait_for_rows(crashed, minimum=3, proc=proc)
            else:
                time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            _kill_group(proc)
    res = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _snapshot(crashed) == _snapshot(clean)
    a, b = (
        PatchStore(crashed).query("images").to_polars(),
        PatchStore(clean).query("images").to_polars(),
    )
    cols = ["image_id", "status", "content_hash", "patch_count"]
    assert a.select(cols).sort("image_id").equals(b.select(cols).sort("image_id"))


def _wait_for_rows(store_path: Path, minimum: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ingest finished before it could be killed"
        try:
            if PatchStore(store_path).table("images").count_rows() >= minimum:
                return
        except ClanetError:
            pass  # the store is not created yet
        time.sleep(0.1)
    raise AssertionError("ingest wrote no rows in time")


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill what the killed driver left behind (its Dask worker processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.realdata
def test_second_writer_fails_at_once(tmp_path, shared_data):
    root = _copy_subset(shared_data, tmp_path / "export", lines=SUBSET[2:])
    store_path = tmp_path / "store"
    PatchStore(store_path, create=True)
    with writer_lock(store_path):
        start = time.monotonic()
        with pytest.raises(StoreBusyError, match=r"another process .* is writing"):
            ingest(root, store_path, workers=1)
        assert time.monotonic() - start < 10
        # readers are not blocked
        assert PatchStore(store_path).query("images").to_polars().height == 0


def test_newer_store_version_is_refused(tmp_path):
    path = tmp_path / "store"
    PatchStore(path, create=True)
    meta = json.loads((path / "store.json").read_text())
    meta["tables"]["patches"] = 99
    (path / "store.json").write_text(json.dumps(meta))
    with pytest.raises(StoreVersionError, match="newer than this clanet-store"):
        PatchStore(path)
    meta["tables"]["patches"] = 1
    meta["store_version"] = 7
    (path / "store.json").write_text(json.dumps(meta))
    with pytest.raises(StoreVersionError, match="store layout version 7"):
        PatchStore(path)


@pytest.mark.realdata
def test_external_scheduler_with_two_workers(tmp_path, shared_data):
    root = _copy_subset(shared_data, tmp_path / "export", lines=SUBSET[2:])
    with dask_processes(2) as address:
        report = ingest(root, tmp_path / "store", scheduler=address)
    assert report.workers == 2
    assert report.images_added == 3
    _crop_check(PatchStore(tmp_path / "store"), root)


def test_task_batches_cover_every_image_once_and_end_with_single_images():
    for n, workers in ((0, 2), (3, 2), (17, 1), (200, 2)):
        batches = list(_task_batches(n, workers))
        assert [i for batch in batches for i in batch] == list(range(n))
        assert max(map(len, batches), default=0) <= TASK_IMAGES
        tail = min(n, workers * TASK_IMAGES)
        assert all(len(batch) == 1 for batch in batches[len(batches) - tail :])


def test_main_script_hidden_while_workers_spawn_then_restored():
    main = sys.modules["__main__"]
    before = (getattr(main, "__file__", None), main.__spec__)
    with _main_script_hidden():
        assert getattr(main, "__file__", None) is None
        assert main.__spec__ is None
    assert (getattr(main, "__file__", None), main.__spec__) == before
