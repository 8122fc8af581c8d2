"""The same images stored two ways (an export and an archive, or an OME-TIFF) must give the same
patches: helpers shared by tests/test_archive.py and tests/test_microscopy.py."""

from pathlib import Path

import numpy as np
import polars as pl

from clanet_store.pipelines.ingest import ingest
from clanet_store.stores.patch_store import PatchStore


def write_plate_map(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A plate map CSV (experiment, well, cell_line, batch) with ``rows``."""
    lines = ["experiment,well,cell_line,batch", *(",".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def ingest_each(tmp: Path, roots: dict[str, Path], plate: Path, images: int) -> dict:
    """Ingest each root into ``tmp/<name>.store`` (one worker); each must add ``images`` images
    with patches. ``{name: (store path, report)}``."""
    out = {}
    for name, root in roots.items():
        report = ingest(root, tmp / f"{name}.store", plate, workers=1)
        assert report.images_added == images and report.patches_added > 0, report.rejects
        out[name] = (tmp / f"{name}.store", report)
    return out


def assert_same_patches(stores: list[Path], times: set[float]) -> None:
    """The stores hold the same patches, pixel for pixel, with the same keys, sequence ids and
    ``times``."""
    snapshots = []
    for path in stores:
        store = PatchStore(path)
        images = (
            store.query("images")
            .to_polars()
            .filter(pl.col("status") == "ok")
            .select("image_id", "timepoint_h")
        )
        patches = (
            store.query("patches")
            .to_polars()
            .join(images, on="image_id")
            .sort("timepoint_h", "rank")
        )
        keys = patches.select(
            "cell_line", "batch", "well", "location", "sequence_id", "timepoint_h", "x", "y"
        )
        snapshots.append((keys, store.read_rows(patches["row"].to_numpy())))
    (keys_a, pixels_a), (keys_b, pixels_b) = snapshots
    assert keys_a.equals(keys_b) and set(keys_a["timepoint_h"]) == times
    np.testing.assert_array_equal(pixels_a, pixels_b)
