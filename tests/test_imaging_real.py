"""Overlays, mask and CCS on every real image in ../shared/data (azgcb_sample, livecell_shsy5y)."""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image
from test_imaging_ccs import check_boxes
from test_imaging_mask import straightforward_mask

from clanet_store.imaging import ccs
from clanet_store.imaging.decode import read_grey
from clanet_store.imaging.extract import extract
from clanet_store.imaging.mask import brightfield_mask
from clanet_store.imaging.overlays import exclusion_mask, find_overlays

pytestmark = pytest.mark.realdata

REFERENCE_ROWS = 890  # the reference drops the bottom 150 of 1040 rows


class Result(NamedTuple):
    name: str  # path relative to the data set folder
    shape: tuple[int, int]
    boxes: np.ndarray
    mask: np.ndarray  # np.packbits of the boolean mask
    exclude: np.ndarray  # np.packbits of the excluded pixels
    kinds: list[str]  # overlay kinds found
    coloured: np.ndarray | None  # np.packbits of the pixels whose channels differ (JPEG only)
    confluency: float


def unpack(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def run(path: Path, root: Path) -> Result:
    grey = read_grey(path)
    result = extract(grey)
    coloured = None
    if path.suffix == ".jpg":
        rgb = np.asarray(Image.open(path)).astype(np.int16)
        chroma = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 0] - rgb[..., 2])
        coloured = np.packbits(chroma > 6)  # the overlays are yellow; JPEG noise stays below this
    return Result(
        str(path.relative_to(root)),
        grey.shape,
        result.boxes,
        np.packbits(result.mask),
        np.packbits(result.exclude),
        [o.kind for o in find_overlays(grey)],
        coloured,
        result.confluency,
    )


def run_all(root: Path, pattern: str) -> list[Result]:
    """``run`` on every image, on all cores (spawned workers: safe after torch was imported)."""
    workers = min(os.cpu_count() or 1, 4)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(partial(run, root=root), sorted(root.glob(pattern)), chunksize=8))


@pytest.fixture(scope="module")
def azgcb(shared_data: Path) -> list[Result]:
    return run_all(shared_data / "azgcb_sample", "*/*.jpg")


@pytest.fixture(scope="module")
def livecell(shared_data: Path) -> list[Result]:
    return run_all(shared_data / "livecell_shsy5y", "*.tif")


def test_data_sets_are_complete(azgcb, livecell):
    assert len(azgcb) == 72 and len(livecell) == 176
    assert {r.shape for r in azgcb} == {(1040, 1408)}
    assert {r.shape for r in livecell} == {(520, 704)}


@pytest.mark.parametrize("data_set", ["azgcb", "livecell"])
def test_boxes_on_every_image(data_set, request):
    for r in request.getfixturevalue(data_set):
        mask, exclude = unpack(r.mask, r.shape), unpack(r.exclude, r.shape)
        check_boxes(r.boxes, mask, ccs.PATCH_SIZE, exclude)
        assert r.boxes.size >= 10, r.name  # every real image has enough cell clusters
        top = r.boxes["density"][:10]
        assert top.mean() >= r.confluency, r.name  # the patches sit on cells, not background


def test_overlays_found_and_covered_on_every_azgcb_image(azgcb):
    for r in azgcb:
        assert sorted(r.kinds) == ["scale_bar", "time_stamp"], r.name
        exclude = unpack(r.exclude, r.shape)
        coloured = unpack(r.coloured, r.shape)
        assert coloured.sum() > 5000, r.name
        assert not (coloured & ~exclude).any(), r.name  # every overlay pixel is excluded
        assert exclude.sum() < 0.05 * exclude.size  # far less than the reference's 150 rows (14 %)
        assert not exclude[:900].any() and not exclude[:, 450:1200].any(), r.name


def test_livecell_images_lose_nothing(livecell):
    for r in livecell:
        assert r.kinds == [] and not unpack(r.exclude, r.shape).any(), r.name


def test_mask_parity_with_reference_workflow(azgcb, shared_data):
    with open(shared_data / "azgcb_sample_reference_masks.csv", newline="") as f:
        reference = {row["image"]: float(row["mask_fraction"]) for row in csv.DictReader(f)}
    assert len(reference) == len(azgcb)
    differences = np.array(
        [unpack(r.mask, r.shape)[:REFERENCE_ROWS].mean() - reference[r.name] for r in azgcb]
    )
    assert (np.abs(differences) <= 0.03).mean() >= 0.9


def test_confluent_images_of_different_lines_get_different_patches(azgcb):
    """Density ties are broken by spreading: not one block of tiles shared by every line."""
    confluent = [r for r in azgcb if (r.boxes["density"] == 1).all()]
    assert len(confluent) >= 13
    seen: dict[tuple, str] = {}
    for r in confluent:
        top = r.boxes[:10]
        key = tuple(zip(top["x"].tolist(), top["y"].tolist(), strict=True))
        line = r.name.split("/")[0]
        assert seen.setdefault(key, line) == line, (r.name, seen[key])
        h, w = r.shape
        assert np.ptp(top["y"]) >= (h - ccs.PATCH_SIZE) / 2, r.name
        assert np.ptp(top["x"]) >= (w - ccs.PATCH_SIZE) / 2, r.name


@pytest.mark.parametrize("name", ["A431/A431_B1_1_00d00h00m.jpg", "KPL4/KPL4_G7_1_05d18h00m.jpg"])
def test_fast_mask_equals_straightforward_on_real_images(shared_data, name):
    grey = read_grey(shared_data / "azgcb_sample" / name)
    exclude = exclusion_mask(grey.shape, find_overlays(grey))
    np.testing.assert_array_equal(
        brightfield_mask(grey, exclude), straightforward_mask(grey, exclude)
    )
