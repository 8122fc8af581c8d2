"""Raw Incucyte archives (EssenFiles/ScanData/YYMM/DD/HHMM/<vessel>/<well>-<field>-<channel>.tif):
names and time paths, a scanned tree with its times, keys and rejects, and the same images
ingested as an export and as an archive giving the same patches."""

from datetime import datetime
from pathlib import Path

import lancedb
import numpy as np
import polars as pl
import pytest
import tifffile
import zarr
from same_patches import assert_same_patches, ingest_each, write_plate_map

from clanet_store.exports.archive import parse_archive_path
from clanet_store.exports.names import NameParseError
from clanet_store.exports.scan import scan_export
from clanet_store.imaging.decode import read_grey
from clanet_store.stores.patch_store import PatchStore

SCAN = ("EssenFiles", "ScanData")


def test_archive_path_and_name():
    image = parse_archive_path((*SCAN, "2311", "30", "2315", "VID42"), "B12-3-Ph.tif")
    assert (image.vessel, image.well, image.location, image.channel) == ("VID42", "B12", 3, "Ph")
    assert image.acquired_at == datetime(2023, 11, 30, 23, 15) and not image.fluorescence
    assert parse_archive_path(("2311", "30", "2315", "V"), "A1-1-C1.tif", "ScanData").fluorescence
    for folders, name, reason in [
        ((*SCAN, "2311", "31", "0800", "V"), "A1-1-Ph.tif", "not a valid date"),
        ((*SCAN, "23x1", "30", "0800", "V"), "A1-1-Ph.tif", "time folder '23x1' is not YYMM"),
        ((*SCAN, "2311", "30", "V"), "A1-1-Ph.tif", "is not YYMM/DD/HHMM/<vessel>"),
        ((*SCAN, "2311", "30", "0800", "V"), "A1_1_Ph.tif", "not <well>-<field>-<channel>"),
        ((*SCAN, "2311", "30", "0800", "V"), "Z1-1-Ph.tif", "well 'Z1'"),
        ((*SCAN, "2311", "30", "0800", "V"), "A1-1-XX.tif", "channel 'XX'"),
        (("2311", "30", "0800", "V"), "A1-1-Ph.tif", "not under a ScanData folder"),
    ]:
        with pytest.raises(NameParseError, match=reason):
            parse_archive_path(folders, name)


def _tif(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, pixels)


def test_scan_reads_times_keys_and_rejects(tmp_path):
    """Two vessels, scans over a month boundary, fluorescence ignored, bad paths rejected."""
    root = tmp_path / "EssenFiles"
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    scans = {"VID1": ["2310/31/2200", "2311/01/0200", "2311/01/2200"], "VID2": ["2311/01/0800"]}
    for vessel, times in scans.items():
        for t in times:
            for name in ("B2-1-Ph.tif", "B2-2-Ph.tif", "C3-1-Ph.tif", "B2-1-C1.tif", "C3-1-C2.tif"):
                _tif(root / "ScanData" / t / vessel / name, pixels)
    _tif(root / "ScanData/2311/32/0800/VID1/B2-1-Ph.tif", pixels)  # no 32 November
    _tif(root / "ScanData/2311/01/0800/VID1/B2_1_Ph.tif", pixels)  # export-style name
    _tif(root / "ScanData/2311/01/0800/VID1/D4-1-Ph.tif", pixels)  # no plate-map entry
    plate = write_plate_map(
        tmp_path / "plate.csv",
        [
            ("VID1", "B2", "A549", "b1"),
            ("VID1", "C3", "HeLa", "b1"),
            ("VID2", "B2", "A549", "b2"),
            ("VID2", "C3", "HeLa", "b2"),
        ],
    )
    result = scan_export(root, plate)
    m = result.manifest
    assert m.height == 3 * 3 + 3 and result.fluorescence_ignored == 2 * 4
    assert set(m["bits"]) == {16} and set(m["channel"]) == {"Ph"}
    vid1 = m.filter((pl.col("experiment") == "VID1") & (pl.col("well") == "B2"))
    assert sorted(vid1.filter(pl.col("location") == 1)["timepoint_h"]) == [0.0, 4.0, 24.0]
    assert set(vid1["cell_line"]) == {"A549"} and set(vid1["location"]) == {1, 2}
    assert m.filter(pl.col("experiment") == "VID2")["timepoint_h"].to_list() == [0.0] * 3
    hela = m.filter(pl.col("cell_line") == "HeLa")
    assert set(zip(hela["experiment"], hela["batch"], strict=True)) == {
        ("VID1", "b1"),
        ("VID2", "b2"),
    }
    assert m["sequence_id"].n_unique() == 2 * 3  # (line, batch, well, field) per vessel
    reasons = dict(result.rejects.iter_rows())
    assert reasons.keys() == {
        "ScanData/2311/32/0800/VID1/B2-1-Ph.tif",
        "ScanData/2311/01/0800/VID1/B2_1_Ph.tif",
        "ScanData/2311/01/0800/VID1/D4-1-Ph.tif",
    }
    assert "not a valid date" in reasons["ScanData/2311/32/0800/VID1/B2-1-Ph.tif"]
    assert "<well>-<field>-<channel>" in reasons["ScanData/2311/01/0800/VID1/B2_1_Ph.tif"]
    assert (
        "no plate-map entry for vessel VID1 well D4"
        in reasons["ScanData/2311/01/0800/VID1/D4-1-Ph.tif"]
    )
    # The archive's ScanData folder as the root reads the same.
    inner = scan_export(root / "ScanData", plate).manifest
    assert (
        inner.select("timepoint_h", "well", "location")
        .sort(pl.all())
        .equals(m.select("timepoint_h", "well", "location").sort(pl.all()))
    )


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, shared_data) -> dict:
    """Two real images as 16-bit TIFFs ingested twice: once named as an export, once in an
    archive (with a bad time folder that is rejected while the rest ingests)."""
    tmp = tmp_path_factory.mktemp("archive")
    source = sorted((shared_data / "azgcb_sample" / "A431").glob("A431_B1_1_*.jpg"))[:2]
    export, archive = tmp / "export", tmp / "archive" / "EssenFiles"
    for i, path in enumerate(source):
        pixels = read_grey(path).astype(np.uint16) * 257
        _tif(export / f"VID7_Ph_B1_1_00d0{2 * i}h00m.tif", pixels)
        scan = archive / "ScanData" / "2401" / "15" / f"{8 + 2 * i:02d}00" / "VID7"
        _tif(scan / "B1-1-Ph.tif", pixels)
    _tif(archive / "ScanData" / "2401" / "15" / "2500" / "VID7" / "B1-1-Ph.tif", pixels)
    plate = write_plate_map(tmp / "plate.csv", [("VID7", "B1", "A431", "b1")])
    return ingest_each(tmp, {"export": export, "archive": archive}, plate, 2)


@pytest.mark.realdata
def test_export_and_archive_of_the_same_images_give_the_same_patches(two_stores):
    """The same patches, pixel for pixel, and the archive's bad time folder is a reject."""
    assert [r["reason"] for r in two_stores["archive"][1].rejects] == [
        "bad file name: time path 2401/15/2500 is not a valid date: hour must be in 0..23"
    ]
    assert_same_patches([path for path, _ in two_stores.values()], {0.0, 2.0})


@pytest.mark.realdata
def test_patches_open_with_plain_zarr_as_in_the_docs(two_stores):
    """The napari recipe of docs/formats.md: the patch array and one image's patches with plain
    zarr (the image's slot and patch count from its LanceDB row)."""
    path = two_stores["archive"][0]
    patches = zarr.open_array(path / "patches.zarr", mode="r")
    assert patches.shape[1:] == (112, 112) and patches.dtype == np.uint8
    images = lancedb.connect(path / "lance").open_table("images").to_polars().collect()
    image = images.filter(pl.col("status") == "ok").sort("path").row(0, named=True)
    start = image["slot"] * 20
    mine = patches[start : start + image["patch_count"]]
    store = PatchStore(path)
    rows = (
        store.query("patches")
        .to_polars()
        .filter(pl.col("image_id") == image["image_id"])
        .sort("row")
    )
    np.testing.assert_array_equal(mine, store.read_rows(rows["row"].to_numpy()))
    assert mine.shape[0] == image["patch_count"] > 0
