"""Microscopy files (docs/formats.md): OME-TIFFs the tests write scan into one row per time point
of the phase channel (keys from the OME plate or the file name), bad files are rejects with the
reason, and the planes of an OME-TIFF, an OME-Zarr and CZI files ingest into the same patches as
the same planes written as plain TIFFs in an export."""

import importlib.util
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
import zarr
from ome_types import model, to_xml
from same_patches import assert_same_patches, ingest_each, write_plate_map

from clanet_store.exports.microscopy import MicroscopyError, read_plane, split_ref
from clanet_store.exports.scan import scan_export
from clanet_store.imaging.decode import read_grey
from clanet_store.pipelines.ingest import ingest


def _ome_tif(path: Path, planes: np.ndarray, channels: list[str], hours: list[float]) -> None:
    """Write ``planes`` (T, C, Y, X) as an OME-TIFF with channel names and Plane DeltaT."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_t, n_c = planes.shape[:2]
    metadata = {
        "axes": "TCYX",
        "Channel": {"Name": channels},
        "Plane": {"DeltaT": [h * 3600 for h in hours for _ in range(n_c)]},
    }
    metadata["Plane"]["DeltaTUnit"] = ["s"] * (n_t * n_c)
    tifffile.imwrite(path, planes, ome=True, metadata=metadata)


def _ome_zarr(path: Path, planes: np.ndarray, channels: list[str], hours: float) -> None:
    """Write ``planes`` (T, C, Y, X) as an OME-Zarr (NGFF 0.5, Zarr v3) with plain zarr: level 0
    and a 2x downsampled level 1, channel labels, ``hours`` between time points."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("0", data=planes, chunks=(1, 1, *planes.shape[2:]))
    group.create_array("1", data=planes[..., ::2, ::2], chunks=(1, 1, *planes.shape[2:]))
    space = {"type": "space", "unit": "micrometer"}
    axes = [
        {"name": "t", "type": "time", "unit": "hour"},
        {"name": "c", "type": "channel"},
        {"name": "y", **space},
        {"name": "x", **space},
    ]
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [{"type": "scale", "scale": [hours, 1, s, s]}],
        }
        for i, s in ((0, 1.0), (1, 2.0))
    ]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": datasets}],
        "omero": {"channels": [{"label": name} for name in channels]},
    }


def _czi(path: Path, planes: np.ndarray, channels: list[str]) -> None:
    """Write ``planes`` (T, C, Y, X) as a CZI with pylibCZIrw (which stores no time stamps)."""
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    path.parent.mkdir(parents=True, exist_ok=True)
    with pyczi.create_czi(str(path)) as czi:
        for t, c in np.ndindex(planes.shape[:2]):
            czi.write(data=planes[t, c][..., None], plane={"T": t, "C": c, "Z": 0})
        czi.write_metadata(channel_names=dict(enumerate(channels)))


def _plate_ome_tif(path: Path, planes: np.ndarray) -> None:
    """One brightfield channel, T from TimeIncrement, plate PL9 well C5 and an acquisition date
    in the OME-XML (ome-types writes it; tifffile writes no plates)."""
    n_t, height, width = planes.shape
    pixels = model.Pixels(
        dimension_order="XYZCT",
        type="uint16",
        size_x=width,
        size_y=height,
        size_z=1,
        size_c=1,
        size_t=n_t,
        channels=[model.Channel(name="Brightfield", samples_per_pixel=1)],
        tiff_data_blocks=[model.TiffData(plane_count=n_t)],
        time_increment=3.0,
        time_increment_unit="h",
    )
    image = model.Image(id="Image:0", pixels=pixels, acquisition_date=datetime(2024, 1, 15, 8))
    sample = model.WellSample(index=0, image_ref=model.ImageRef(id="Image:0"))
    plate = model.Plate(name="PL9", wells=[model.Well(row=2, column=4, well_samples=[sample])])
    xml = to_xml(model.OME(images=[image], plates=[plate]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path, planes, description=xml.encode(), metadata=None, photometric="minisblack"
    )


def test_scan_reads_planes_keys_times_and_rejects(tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 60000, (3, 2, 48, 64), dtype=np.uint16)
    _ome_tif(tmp_path / "VID7_B1_2.ome.tif", planes, ["Phase", "GFP"], [0.0, 4.0, 8.0])
    _plate_ome_tif(tmp_path / "plates" / "anything.ome.tiff", planes[:, 0])
    (tmp_path / "broken_B1_1.ome.tif").write_bytes(b"II*\x00" + bytes(100))
    _ome_tif(tmp_path / "VID7_B1_3.ome.tif", planes, ["GFP", "RFP"], [0.0, 4.0, 8.0])
    _ome_tif(tmp_path / "VID8_D4_1.ome.tif", planes, ["Phase", "GFP"], [0.0, 4.0, 8.0])
    (tmp_path / "VID7_B1_4.nd2").write_bytes(b"not an nd2 file")
    plate = write_plate_map(
        tmp_path / "plate.csv", [("VID7", "B1", "A549", "b1"), ("PL9", "C5", "HeLa", "b2")]
    )
    result = scan_export(tmp_path, plate)
    m = result.manifest.sort("path")
    assert m.height == 6 and result.fluorescence_ignored == 3  # the GFP planes of VID7_B1_2
    a549 = m.filter(pl.col("cell_line") == "A549")
    assert a549["path"].to_list() == [f"VID7_B1_2.ome.tif#S0T{t}C0Z0" for t in range(3)]
    assert a549["timepoint_h"].to_list() == [0.0, 4.0, 8.0]
    assert set(a549["location"]) == {2} and set(a549["channel"]) == {"Phase"}
    assert set(a549["format"]) == {"ome-tiff"} and set(a549["bits"]) == {16}
    assert (a549["width"][0], a549["height"][0]) == (64, 48)
    hela = m.filter(pl.col("cell_line") == "HeLa")
    assert set(zip(hela["experiment"], hela["well"], hela["batch"], strict=True)) == {
        ("PL9", "C5", "b2")
    }
    assert hela["timepoint_h"].to_list() == [0.0, 3.0, 6.0]
    assert hela["acquired_at"].to_list()[1] == datetime(2024, 1, 15, 11)
    reasons = dict(result.rejects.iter_rows())
    assert reasons.keys() == {
        "broken_B1_1.ome.tif",
        "VID7_B1_3.ome.tif",
        "VID8_D4_1.ome.tif",
        "VID7_B1_4.nd2",
    }
    assert reasons["broken_B1_1.ome.tif"].startswith("bad microscopy file: cannot read ome-tiff")
    assert "no phase / brightfield channel among GFP, RFP" in reasons["VID7_B1_3.ome.tif"]
    assert "no plate-map entry for experiment VID8 well D4" in reasons["VID8_D4_1.ome.tif"]
    if importlib.util.find_spec("bioio_nd2") is None:
        assert reasons["VID7_B1_4.nd2"] == (
            "bad microscopy file: reading nd2 needs the bioio plugin bioio-nd2: "
            "pip install bioio-nd2"
        )
    # A plane reference reads back the plane it names.
    ref = str(tmp_path / a549["path"][1])
    assert split_ref(ref) == (str(tmp_path / "VID7_B1_2.ome.tif"), 0, 1, 0, 0)
    np.testing.assert_array_equal(read_plane(ref), planes[1, 0])
    with pytest.raises(MicroscopyError, match="cannot read plane"):
        read_plane(ref.replace("T1C0", "T7C0"))


@pytest.fixture(scope="module")
def ome_and_tiff_stores(tmp_path_factory, shared_data) -> dict:
    """Three real images as the phase channel of one OME-TIFF and of one OME-Zarr (T=3, with a
    GFP channel of noise), each next to a corrupt file of its format; and the same planes as
    plain 16-bit TIFFs in an export."""
    tmp = tmp_path_factory.mktemp("microscopy")
    source = sorted((shared_data / "azgcb_sample" / "A431").glob("A431_B1_1_*.jpg"))[:3]
    phase = np.stack([read_grey(p).astype(np.uint16) * 257 for p in source])
    noise = np.random.default_rng(1).integers(0, 65535, phase.shape, dtype=np.uint16)
    ome, ngff, export = tmp / "ome", tmp / "ngff", tmp / "export"
    _ome_tif(ome / "VID7_B1_1.ome.tif", np.stack([phase, noise], 1), ["Phase", "GFP"], [0, 2, 4])
    (ome / "VID7_B1_2.ome.tif").write_bytes(b"II*\x00" + bytes(64))
    _ome_zarr(ngff / "VID7_B1_1.ome.zarr", np.stack([phase, noise], 1), ["Phase", "GFP"], 2.0)
    zarr.open_group(ngff / "VID7_B1_2.ome.zarr", mode="w")  # a Zarr group without NGFF metadata
    export.mkdir()
    for t, pixels in enumerate(phase):
        tifffile.imwrite(export / f"VID7_Ph_B1_1_00d0{2 * t}h00m.tif", pixels)
    plate = write_plate_map(tmp / "plate.csv", [("VID7", "B1", "A431", "b1")])
    return ingest_each(tmp, {"ome": ome, "ngff": ngff, "export": export}, plate, 3)


@pytest.mark.realdata
def test_ome_tiff_ingests_into_the_same_patches_as_an_export(ome_and_tiff_stores):
    """Pixel-equal patches with the same keys and times; the corrupt file is a reject with its
    reason, the GFP planes are ignored and counted; a second ingest adds nothing."""
    report = ome_and_tiff_stores["ome"][1]
    assert report.fluorescence_ignored == 3
    assert [r["path"] for r in report.rejects] == ["VID7_B1_2.ome.tif"]
    assert report.rejects[0]["reason"].startswith("bad microscopy file: cannot read ome-tiff")
    stores = {name: path for name, (path, _) in ome_and_tiff_stores.items()}
    assert_same_patches([stores["ome"], stores["export"]], {0.0, 2.0, 4.0})
    root = ome_and_tiff_stores["ome"][0].parent / "ome"
    plate = root.parent / "plate.csv"
    again = ingest(root, ome_and_tiff_stores["ome"][0], plate, workers=1)
    assert (again.images_added, again.images_replaced, again.images_skipped) == (0, 0, 4)


def test_middle_z_plane_and_scenes_as_fields(tmp_path):
    """Z: the middle plane is the image; a file with two scenes and no field in its name gives
    fields 1 and 2 of its well."""
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 60000, (2, 1, 3, 16, 24), dtype=np.uint16)  # T, C, Z, Y, X
    path = tmp_path / "VID9_C2.ome.tif"
    metadata = {"axes": "TCZYX", "Channel": {"Name": ["BF"]}, "TimeIncrement": 1.0}
    with tifffile.TiffWriter(path, ome=True) as tif:
        for scene in range(2):
            tif.write(stack + scene, metadata={**metadata, "TimeIncrementUnit": "h"})
    plate = write_plate_map(tmp_path / "plate.csv", [("VID9", "C2", "A549", "b1")])
    m = scan_export(tmp_path, plate).manifest.sort("path")
    assert m["path"].to_list() == [f"VID9_C2.ome.tif#S{s}T{t}C0Z1" for s in (0, 1) for t in (0, 1)]
    assert m["location"].to_list() == [1, 1, 2, 2]
    assert m["timepoint_h"].to_list() == [0.0, 1.0, 0.0, 1.0]
    np.testing.assert_array_equal(read_plane(str(tmp_path / m["path"][3])), stack[1, 0, 1] + 1)


@pytest.mark.realdata
def test_ome_zarr_ingests_into_the_same_patches_as_an_export(ome_and_tiff_stores):
    """An OME-Zarr read with plain zarr: level 0, the phase channel by its omero label, times
    from the t-axis scale; a Zarr group without NGFF metadata is a reject with the reason."""
    report = ome_and_tiff_stores["ngff"][1]
    assert report.fluorescence_ignored == 3
    assert [(r["path"], r["reason"]) for r in report.rejects] == [
        (
            "VID7_B1_2.ome.zarr",
            "bad microscopy file: cannot read ome-zarr (NgffError: no NGFF multiscales metadata)",
        )
    ]
    stores = {name: path for name, (path, _) in ome_and_tiff_stores.items()}
    assert_same_patches([stores["ngff"], stores["export"]], {0.0, 2.0, 4.0})


@pytest.mark.realdata
def test_czi_ingests_into_the_same_patches_as_an_export(tmp_path, shared_data):
    """Three real images as the phase channel of three one-time-point CZIs (fields 1-3, with a
    GFP channel) give the patches of the same planes as TIFFs. pylibCZIrw writes no time
    stamps, so a CZI of several time points is a reject saying so; a corrupt CZI one too."""
    pytest.importorskip("bioio_czi")
    source = sorted((shared_data / "azgcb_sample" / "A431").glob("A431_B1_1_*.jpg"))[:3]
    phase = np.stack([read_grey(p).astype(np.uint16) * 257 for p in source])
    noise = np.random.default_rng(3).integers(0, 65535, phase.shape, dtype=np.uint16)
    czi, export = tmp_path / "czi", tmp_path / "export"
    export.mkdir()
    for field, pixels in enumerate(phase, start=1):
        _czi(czi / f"VID7_B1_{field}.czi", np.stack([pixels, noise[0]])[None], ["Phase", "GFP"])
        tifffile.imwrite(export / f"VID7_Ph_B1_{field}_00d00h00m.tif", pixels)
    _czi(czi / "VID7_B1_4.czi", np.stack([phase, noise], 1), ["Phase", "GFP"])
    (czi / "VID7_B1_5.czi").write_bytes(b"ZISRAWFILE" + bytes(64))
    plate = write_plate_map(tmp_path / "plate.csv", [("VID7", "B1", "A431", "b1")])
    stores = ingest_each(tmp_path, {"czi": czi, "export": export}, plate, 3)
    report = stores["czi"][1]
    assert report.fluorescence_ignored == 3
    reasons = {r["path"]: r["reason"] for r in report.rejects}
    assert reasons.keys() == {"VID7_B1_4.czi", "VID7_B1_5.czi"}
    assert "3 time points but no Plane DeltaT" in reasons["VID7_B1_4.czi"]
    assert reasons["VID7_B1_5.czi"].startswith("bad microscopy file: cannot read czi")
    assert_same_patches([stores["czi"][0], stores["export"][0]], {0.0})


def test_ome_zarr_0_4_with_z_and_minutes(tmp_path):
    """NGFF 0.4 (Zarr v2, metadata at the top of the attributes): five axes, the middle Z plane,
    the only channel without a label, times from a scale in minutes."""
    stack = np.random.default_rng(4).integers(0, 255, (2, 1, 3, 16, 24), dtype=np.uint8)
    group = zarr.open_group(tmp_path / "VID9_C2_3.ome.zarr", mode="w", zarr_format=2)
    group.create_array("s0", data=stack, chunks=stack.shape)
    axes = [{"name": a, "unit": "minute" if a == "t" else None} for a in "tczyx"]
    scale = [{"type": "scale", "scale": [30.0, 1, 1, 1, 1]}]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "s0", "coordinateTransformations": scale}],
        }
    ]
    plate = write_plate_map(tmp_path / "plate.csv", [("VID9", "C2", "A549", "b1")])
    m = scan_export(tmp_path, plate).manifest.sort("path")
    assert m["path"].to_list() == [f"VID9_C2_3.ome.zarr#S0T{t}C0Z1" for t in (0, 1)]
    assert m["timepoint_h"].to_list() == [0.0, 0.5] and set(m["location"]) == {3}
    assert set(m["bits"]) == {8} and set(m["format"]) == {"ome-zarr"}
    np.testing.assert_array_equal(read_plane(str(tmp_path / m["path"][1])), stack[1, 0, 1])
