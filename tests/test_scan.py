"""Export discovery: layouts, plate maps, rejects, manifest layout, and the real exports."""

import json
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from clanet_store.cli import main
from clanet_store.errors import ClanetError
from clanet_store.exports.scan import scan_export
from clanet_store.exports.summary import batch_summary
from clanet_store.schemas import load_schema
from clanet_store.stores.manifest import read_manifest, write_manifest


def _img(path, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], 128, np.uint8)).save(path, "JPEG")


@pytest.fixture
def export(tmp_path):
    root = tmp_path / "export"
    # layout 1: <cell_line>/<batch>/<files>
    for t in ("00d00h00m", "00d04h00m", "00d08h30m"):
        _img(root / "HT 1080" / "B1" / f"HT1080_Phase_C3_1_{t}.jpg")
        _img(root / "HT 1080" / "B2" / f"VID7_C3_1_{t}.jpg")
    # layout 2: <cell_line>/<files>, batch from plate map or prefix
    _img(root / "A549" / "VID1_G7_1_01d00h00m.png")
    _img(root / "A549" / "VID2_G7_1_01d00h00m.JPEG")
    # flat files: cell line from the plate map
    _img(root / "VID9_D4_2_2021y03m14d09h00m.jpg")
    _img(root / "VID9_D4_2_2021y03m14d11h30m.jpg")
    plate = tmp_path / "plate.csv"
    plate.write_text("experiment,well,cell_line,batch\nVID1,G7,A549,batch-7\nVID9,D4,MCF7,b9\n")
    return root, plate


def test_three_layouts_with_plate_map(export):
    root, plate = export
    result = scan_export(root, plate)
    m = result.manifest.sort("path")
    assert result.rejects.height == 0
    assert m.height == 10
    rows = {r["path"]: r for r in m.to_dicts()}
    r = rows["HT 1080/B1/HT1080_Phase_C3_1_00d08h30m.jpg"]
    assert (r["cell_line"], r["batch"], r["experiment"], r["channel"]) == (
        "HT 1080",
        "B1",
        "HT1080",
        "Phase",
    )
    assert r["timepoint_h"] == 8.5
    assert (r["width"], r["height"], r["format"]) == (16, 12, "jpeg")
    assert rows["A549/VID1_G7_1_01d00h00m.png"]["batch"] == "batch-7"  # plate map
    assert rows["A549/VID2_G7_1_01d00h00m.JPEG"]["batch"] == "VID2"  # experiment prefix
    flat = m.filter(pl.col("experiment") == "VID9").sort("timepoint_h")
    assert flat["cell_line"].to_list() == ["MCF7", "MCF7"]
    assert flat["timepoint_h"].to_list() == [0.0, 2.5]  # absolute stamps: hours since first
    summary = batch_summary(m).filter(pl.col("cell_line") == "HT 1080")
    assert summary["median_interval_h"].to_list() == [4.25, 4.25]


def test_flat_files_without_plate_map_take_the_prefix(export):
    root, _ = export
    result = scan_export(root)
    assert result.rejects.height == 0
    flat = result.manifest.filter(pl.col("experiment") == "VID9")
    assert set(flat["cell_line"]) == set(flat["batch"]) == {"VID9"}
    assert result.cell_line_from_prefix == 2


def test_rejects_do_not_stop_the_scan(export):
    root, _ = export
    (root / "A549" / "notes.txt").write_text("ignored")
    (root / "A549" / ".DS_Store").write_text("ignored")
    (root / "A549" / "not_a_name.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    (root / "A549" / "VID3_G7_1_01d00h00m.jpg").write_bytes(b"garbage")
    _img(root / "A549" / "VID2_G7_1_01d00h00m.jpg")  # same time point as the .JPEG twin
    _img(root / "A549" / "x" / "y" / "VID4_G7_1_01d00h00m.jpg")  # too deep
    result = scan_export(root)
    reasons = dict(result.rejects.iter_rows())
    assert "bad file name" in reasons["A549/not_a_name.jpg"]
    assert "bad image header" in reasons["A549/VID3_G7_1_01d00h00m.jpg"]
    assert "same sequence and time point" in reasons["A549/VID2_G7_1_01d00h00m.jpg"]
    assert "nested deeper" in reasons["A549/x/y/VID4_G7_1_01d00h00m.jpg"]
    assert result.ignored == 2
    assert result.manifest.height == 10


def test_errors_name_the_file(tmp_path, export):
    with pytest.raises(ClanetError, match="does not exist"):
        scan_export(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClanetError, match="no image files"):
        scan_export(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("experiment,well,cell_line\nVID1,G7,A549\n")
    with pytest.raises(ClanetError, match=r"bad\.csv: plate map lacks column\(s\) batch"):
        scan_export(tmp_path / "export", bad)


def test_ids_are_stable_and_manifest_matches_schema(tmp_path, export):
    root, plate = export
    a = scan_export(root, plate).manifest
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    b = scan_export(moved, plate).manifest
    assert a.sort("path")["image_id"].to_list() == b.sort("path")["image_id"].to_list()
    assert a["image_id"].n_unique() == a.height
    out = tmp_path / "m.parquet"
    write_manifest(a, out)
    written = pq.read_schema(out)
    expected = load_schema("manifest")
    assert [(f.name, f.type, f.nullable) for f in written] == [
        (f.name, f.type, f.nullable) for f in expected
    ]
    assert read_manifest(out).equals(a)


def test_newer_manifest_version_is_refused(tmp_path, export):
    root, plate = export
    out = tmp_path / "m.parquet"
    write_manifest(scan_export(root, plate).manifest, out)
    table = pq.read_table(out)
    pq.write_table(table.replace_schema_metadata({"name": "manifest", "version": "999"}), out)
    with pytest.raises(ClanetError, match="newer than this clanet-store"):
        read_manifest(out)


def test_cli_scan_json_and_error(tmp_path, export):
    root, plate = export
    out = tmp_path / "m.parquet"
    runner = CliRunner()
    res = runner.invoke(
        main, ["scan", str(root), "--plate-map", str(plate), "--out", str(out), "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert (payload["cell_lines"], payload["images"], payload["rejected"]) == (3, 10, 0)
    assert out.exists()
    res = runner.invoke(main, ["scan", str(tmp_path / "nope")])
    assert res.exit_code != 0
    assert res.output.strip().count("\n") == 0 and "does not exist" in res.output


@pytest.mark.realdata
def test_real_azgcb_sample(shared_data):
    result = scan_export(shared_data / "azgcb_sample")
    m = result.manifest
    assert result.rejects.height == 0
    assert (m["cell_line"].n_unique(), m.height) == (20, 72)
    row = m.filter(pl.col("path") == "NCI H2030/NCI H2030_G4_1_08d10h55m.jpg").row(0, named=True)
    assert row["timepoint_h"] == pytest.approx(202.9167, abs=1e-4)
    assert row["timepoint_h"] == 202 + 55 / 60
    assert set(zip(m["width"], m["height"], strict=True)) == {(1408, 1040)}


@pytest.mark.realdata
def test_real_livecell(shared_data):
    result = scan_export(shared_data / "livecell_shsy5y")
    m = result.manifest
    assert result.rejects.height == 0
    assert (m["cell_line"].n_unique(), m.height, m["sequence_id"].n_unique()) == (1, 176, 8)
    per_seq = m.group_by("sequence_id").agg(n=pl.len(), crops=pl.col("crop").n_unique())
    assert per_seq["n"].to_list() == [22] * 8
    assert set(zip(m["width"], m["height"], strict=True)) == {(704, 520)}
    assert set(m["channel"]) == {"Phase"}
