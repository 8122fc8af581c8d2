"""Decoding, overlay detection and the brightfield mask (SPEC 1-2) on constructed images.

The fast mask is checked step by step, and as a whole, against ``straightforward_mask``: SPEC 2
written directly with scipy / scikit-image (also the baseline of ``benchmarks/bench_ccs.py``).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import tifffile
from numba.core import caching
from PIL import Image
from scipy import ndimage as ndi
from skimage import color, exposure, feature, filters, img_as_float, morphology

from clanet_store.imaging import canny as canny_module
from clanet_store.imaging import mask as fast
from clanet_store.imaging.decode import ImageDecodeError, read_grey, to_grey8
from clanet_store.imaging.jit import kernel
from clanet_store.imaging.overlays import exclusion_mask, find_overlays
from clanet_store.imaging.params import MaskParams

SIX = np.ones((6, 6), bool)


# --- the straightforward version (tests and benchmark only) --------------------------------------


def straightforward_fill(mask: np.ndarray, seeds: np.ndarray | None = None) -> np.ndarray:
    """``binary_fill_holes`` with a 6 x 6 structure, the background also grown from ``seeds``.

    (scipy corrupts memory when an image side is shorter than the structure: keep both >= 6.)
    """
    start = np.zeros(mask.shape, bool) if seeds is None else seeds & ~mask
    return ~ndi.binary_dilation(start, SIX, iterations=-1, mask=~mask, border_value=1)


def straightforward_close(mask: np.ndarray) -> np.ndarray:
    return ndi.binary_erosion(ndi.binary_dilation(mask))


def straightforward_mask(grey: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """SPEC 2 as written: float image, float percentiles, skimage Otsu and Canny, scipy filling."""
    valid = None if exclude is None or not exclude.any() else ~exclude
    image = img_as_float(grey)
    pixels = image if valid is None else image[valid]
    lo, hi = np.percentile(pixels, MaskParams().percentiles)
    stretched = exposure.rescale_intensity(image, in_range=(lo, hi))
    otsu = stretched > filters.threshold_otsu(stretched if valid is None else stretched[valid])
    edges = feature.canny(stretched, sigma=MaskParams().canny_sigma, mask=valid)
    keep = np.ones(grey.shape, bool) if valid is None else valid
    otsu &= keep
    n = np.count_nonzero(keep)
    if np.count_nonzero(edges != otsu) / n >= MaskParams().invert_disagreement:
        otsu = ~otsu & keep
    mask = straightforward_fill(
        (straightforward_close(edges) | straightforward_close(otsu)) & keep, exclude
    )
    for _ in range(MaskParams().max_iterations):
        combined = (
            straightforward_close(otsu) | straightforward_close(edges) | straightforward_close(mask)
        )
        new = straightforward_fill(combined & keep, exclude)
        change = np.count_nonzero(new != mask) / n
        mask = new
        if change < MaskParams().tolerance:
            break
    mask = morphology.remove_small_holes(mask, max_size=MaskParams().min_hole - 1)
    mask = morphology.remove_small_objects(mask, max_size=MaskParams().min_object - 1)
    return mask & keep


# --- synthetic images ----------------------------------------------------------------------------


def cells_image(seed: int, shape=(180, 240), n_cells=25, confluent=False) -> np.ndarray:
    """Phase-contrast-like picture: grey background, dark cells with bright halos, noise."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, 100.0)
    for _ in range(n_cells * (4 if confluent else 1)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(4, 12)
        y0, x0 = max(int(cy - r - 3), 0), max(int(cx - r - 3), 0)
        y1, x1 = min(int(cy + r + 4), shape[0]), min(int(cx + r + 4), shape[1])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot(yy - cy, xx - cx)
        window = image[y0:y1, x0:x1]
        window[d < r] = rng.uniform(20, 70)
        window[(d >= r) & (d < r + 3)] = rng.uniform(170, 230)
    image += rng.normal(0, 4, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Blobby random masks with walls of every thickness, holes and gaps."""
    noise = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 2.5))
    return noise > np.quantile(noise, rng.uniform(0.2, 0.8))


def add_overlays(grey: np.ndarray, bar_y: int, bar_x: int, box_y: int, box_x: int) -> np.ndarray:
    """Draw an Incucyte-like scale bar (with a label) and a black time stamp box with text."""
    out = grey.copy()
    out[bar_y : bar_y + 3, bar_x : bar_x + 300] = 227
    out[bar_y - 30 : bar_y - 20, bar_x : bar_x + 8] = 227  # a "0" label above the bar
    out[box_y : box_y + 29, box_x : box_x + 157] = 2
    out[box_y + 8 : box_y + 20, box_x + 20 : box_x + 130 : 3] = 230  # text strokes
    return out


# --- hole filling, closing -----------------------------------------------------------------------


def test_fill_holes_matches_scipy_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(150):
        shape = tuple(rng.integers(6, 70, 2))
        m = random_mask(rng, shape)
        np.testing.assert_array_equal(fast.fill_holes(m), ndi.binary_fill_holes(m, SIX))
        seeds = (rng.random(shape) < 0.01) & ~m  # background also grown from these
        np.testing.assert_array_equal(fast.fill_holes(m, seeds), straightforward_fill(m, seeds))


def test_fill_holes_tiny_images():
    for shape in [(1, 1), (1, 7), (5, 2), (3, 3)]:
        m = np.ones(shape, bool)
        m[0, 0] = False
        assert fast.fill_holes(m).sum() == m.sum()  # every pixel is next to the outside


@pytest.mark.parametrize(
    ("top_left", "bottom_right", "filled"),
    [(2, 2, False), (3, 3, True), (2, 3, True), (3, 2, False)],
)
def test_fill_holes_one_way_walls(top_left, bottom_right, filled):
    """The 6 x 6 growth steps -3..+2: it crosses 2 px walls upwards and leftwards only."""
    m = np.zeros((30, 30), bool)
    m[5:25, 5:25] = True
    m[5 + top_left : 25 - bottom_right, 5 + top_left : 25 - bottom_right] = False
    out = fast.fill_holes(m)
    np.testing.assert_array_equal(out, ndi.binary_fill_holes(m, SIX))
    assert out[10:20, 10:20].all() == filled
    assert not out[:5].any()


def test_closing_matches_scipy():
    rng = np.random.default_rng(2)
    for _ in range(50):
        m = rng.random(tuple(rng.integers(1, 40, 2))) < rng.random()
        np.testing.assert_array_equal(fast.closing(m), straightforward_close(m))


# --- percentiles, Otsu, Canny, clean-up ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["cells", "narrow", "two_levels", "constant", "extremes"])
def test_stretch_and_otsu_luts_match_float_pipeline(kind):
    rng = np.random.default_rng(3)
    grey = {
        "cells": cells_image(3),
        "narrow": rng.integers(97, 103, (60, 80)).astype(np.uint8),
        "two_levels": np.where(rng.random((60, 80)) < 0.3, 40, 200).astype(np.uint8),
        "constant": np.full((60, 80), 77, np.uint8),
        "extremes": rng.choice(np.array([0, 255, 128], np.uint8), (61, 79)),
    }[kind]
    image = img_as_float(grey)
    lo, hi = np.percentile(image, MaskParams().percentiles)
    stretched = exposure.rescale_intensity(image, in_range=(lo, hi))
    hist = np.bincount(grey.ravel(), minlength=256)
    values = fast.stretch_lut(hist)
    np.testing.assert_array_equal(values[grey], stretched)
    np.testing.assert_array_equal(
        fast.otsu_lut(hist, values)[grey], stretched > filters.threshold_otsu(stretched)
    )
    if kind != "constant":  # the bins are a parameter (MaskParams.otsu_bins)
        np.testing.assert_array_equal(
            fast.otsu_lut(hist, values, 32)[grey],
            stretched > filters.threshold_otsu(stretched, nbins=32),
        )


def test_canny_matches_skimage_with_and_without_valid_mask():
    rng = np.random.default_rng(4)
    for seed in range(3):
        image = img_as_float(cells_image(seed))
        np.testing.assert_array_equal(fast.canny(image), feature.canny(image))
        valid = np.ones(image.shape, bool)
        valid[rng.integers(100, 170) :, rng.integers(0, 100) : rng.integers(120, 240)] = False
        np.testing.assert_array_equal(fast.canny(image, valid), feature.canny(image, mask=valid))
    flat = np.full((40, 50), 0.5)
    assert not fast.canny(flat).any()


def test_canny_parameters_match_skimage_s():
    """Sigma and the thresholds are arguments, as in skimage (`MaskParams` carries them)."""
    rng = np.random.default_rng(5)
    image = img_as_float(cells_image(7))
    valid = np.ones(image.shape, bool)
    valid[120:, 30:150] = False
    for sigma, low, high in [(2.0, 0.1, 0.2), (1.5, 0.05, 0.3), (0.7, 0.2, 0.25)]:
        ours = fast.canny(image, valid, sigma=sigma, low=low, high=high)
        theirs = feature.canny(image, sigma, low, high, mask=valid)
        np.testing.assert_array_equal(ours, theirs)
        noisy = rng.random((37, 53))
        np.testing.assert_array_equal(
            canny_module.gaussian(noisy, valid[:37, :53], sigma),
            ndi.gaussian_filter(np.where(valid[:37, :53], noisy, 0), sigma, mode="constant"),
        )
    assert not np.array_equal(fast.canny(image, sigma=2.0), fast.canny(image))


def test_canny_and_its_gaussian_match_on_any_shape():
    """Borders, tiny images, scattered invalid pixels, smooth and noisy images."""
    rng = np.random.default_rng(11)
    for shape in [(1, 1), (2, 5), (3, 3), (7, 4), (40, 50), (123, 77)]:
        noisy = rng.random(shape)
        valid = rng.random(shape) > 0.2
        np.testing.assert_array_equal(
            canny_module.gaussian(noisy, valid),
            ndi.gaussian_filter(np.where(valid, noisy, 0), 1.0, mode="constant", truncate=4.0),
        )
        for image in (noisy, ndi.gaussian_filter(noisy, 2.0)):
            np.testing.assert_array_equal(fast.canny(image), feature.canny(image))
            np.testing.assert_array_equal(
                fast.canny(image, valid), feature.canny(image, mask=valid)
            )


def test_kernels_compile_without_a_cache_directory(monkeypatch):
    """With no writable cache location ``njit(cache=True)`` raises; ``kernel`` compiles anyway."""
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(lambda x: x + 1)
    assert kernel()(lambda x: x + 1)(1) == 2


def test_remove_small_matches_skimage():
    rng = np.random.default_rng(5)
    for _ in range(30):
        m = random_mask(rng, (80, 90))
        expected = morphology.remove_small_objects(
            morphology.remove_small_holes(m, max_size=MaskParams().min_hole - 1),
            max_size=MaskParams().min_object - 1,
        )
        np.testing.assert_array_equal(
            fast.remove_small(m, MaskParams().min_hole, MaskParams().min_object), expected
        )


# --- the whole mask ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("confluent", [False, True])
def test_brightfield_mask_matches_straightforward(seed, confluent):
    grey = cells_image(seed, confluent=confluent)
    np.testing.assert_array_equal(fast.brightfield_mask(grey), straightforward_mask(grey))


def test_brightfield_mask_with_exclusion_matches_straightforward():
    grey = add_overlays(cells_image(7, shape=(300, 500)), bar_y=250, bar_x=20, box_y=265, box_x=330)
    exclude = exclusion_mask(grey.shape, find_overlays(grey))
    assert exclude.any()
    mask = fast.brightfield_mask(grey, exclude)
    np.testing.assert_array_equal(mask, straightforward_mask(grey, exclude))
    assert not (mask & exclude).any()


def test_brightfield_mask_finds_the_cells():
    grey = cells_image(8)
    mask = fast.brightfield_mask(grey)
    assert mask[grey < 80].mean() > 0.7  # cell bodies, inside their bright halos
    assert mask[(grey > 90) & (grey < 110)].mean() < 0.05  # background
    assert 0.1 < fast.confluency(mask) < 0.4


@pytest.mark.parametrize("value", [0, 128, 255])
def test_constant_image_has_no_cells(value):
    grey = np.full((120, 160), value, np.uint8)
    assert not fast.brightfield_mask(grey).any()


def test_mask_rejects_non_grey_input():
    with pytest.raises(ValueError, match="uint8"):
        fast.brightfield_mask(np.zeros((10, 10), np.float64))


def test_confluency_ignores_excluded_pixels():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    exclude = np.zeros((10, 10), bool)
    exclude[5:] = True
    assert fast.confluency(mask) == 0.5
    assert fast.confluency(mask, exclude) == 1.0
    assert fast.confluency(mask, np.ones((10, 10), bool)) == 0.0


# --- decoding ------------------------------------------------------------------------------------


def test_to_grey8_equal_channels_keep_their_value():
    grey = np.random.default_rng(6).integers(0, 256, (20, 30), dtype=np.uint8)
    np.testing.assert_array_equal(to_grey8(np.stack([grey] * 3, axis=2)), grey)
    np.testing.assert_array_equal(to_grey8(np.stack([grey] * 3 + [grey * 0], axis=2)), grey)
    np.testing.assert_array_equal(to_grey8(np.stack([grey] * 3, axis=0)), grey)


def test_to_grey8_true_colour_is_rgb2gray_luma():
    rgb = np.random.default_rng(7).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = to_grey8(rgb)
    assert out.dtype == np.uint8
    assert np.abs(out - color.rgb2gray(rgb) * 255).max() <= 0.5 + 1e-9


def test_to_grey8_scales_16_bit_by_percentiles():
    rng = np.random.default_rng(8)
    raw = rng.integers(1000, 3000, (50, 60)).astype(np.uint16)
    raw[0, 0] = 65535  # a hot pixel must not squash the contrast
    out = to_grey8(raw)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.corrcoef(out[1:].ravel(), raw[1:].ravel())[0, 1] > 0.99
    assert (out[1:] < 255).mean() > 0.99
    assert not to_grey8(np.full((5, 5), 1234, np.uint16)).any()
    floats = to_grey8(rng.random((20, 20)))
    assert floats.dtype == np.uint8 and floats.max() == 255


def test_to_grey8_rejects_odd_shapes():
    with pytest.raises(ValueError, match="shape"):
        to_grey8(np.zeros((4, 5, 6, 7), np.uint8))


def test_read_grey_formats(tmp_path):
    rng = np.random.default_rng(9)
    grey = rng.integers(0, 256, (520, 704), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_grey(tmp_path / "a.png"), grey)
    tifffile.imwrite(tmp_path / "b.tif", grey)
    np.testing.assert_array_equal(read_grey(tmp_path / "b.tif"), grey)
    tifffile.imwrite(tmp_path / "c.tiff", grey.astype(np.uint16) * 200)
    out = read_grey(tmp_path / "c.tiff")
    assert out.shape == grey.shape and np.corrcoef(out.ravel(), grey.ravel())[0, 1] > 0.99
    rgb16 = np.stack([grey, grey // 2, grey // 3], axis=2).astype(np.uint16) * 250
    tifffile.imwrite(tmp_path / "d.tif", rgb16, photometric="rgb")
    assert read_grey(tmp_path / "d.tif").shape == grey.shape
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "e.jpg", quality=95)
    assert np.abs(read_grey(tmp_path / "e.jpg").astype(int) - grey).mean() < 20


def test_read_grey_resizes_legacy_exports_only(tmp_path):
    Image.fromarray(np.full((944, 1280), 90, np.uint8)).save(tmp_path / "old.png")
    old = read_grey(tmp_path / "old.png")
    assert old.shape == (1040, 1408) and (old == 90).all()
    Image.fromarray(np.full((300, 400), 90, np.uint8)).save(tmp_path / "odd.png")
    assert read_grey(tmp_path / "odd.png").shape == (300, 400)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_read_grey_errors_name_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00 this is not a tiff")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty, tmp_path / "missing.jpg"):
        with pytest.raises(ImageDecodeError, match=path.name) as info:
            read_grey(path)
        assert isinstance(info.value, ValueError)


# --- overlays ------------------------------------------------------------------------------------


def test_overlays_found_wherever_they_are():
    grey = cells_image(10, shape=(520, 900))
    drawn = add_overlays(grey, bar_y=200, bar_x=400, box_y=40, box_x=60)
    kinds = {o.kind: o for o in find_overlays(drawn)}
    assert set(kinds) == {"scale_bar", "time_stamp"}
    bar, box = kinds["scale_bar"], kinds["time_stamp"]
    assert bar.y0 <= 200 - 30 and bar.y1 >= 203 and bar.x0 <= 400 and bar.x1 >= 700
    assert (box.y0, box.x0, box.y1, box.x1) == (37, 57, 72, 220)
    exclude = exclusion_mask(drawn.shape, find_overlays(drawn))
    assert exclude[drawn != grey].all()  # every drawn pixel is excluded


@pytest.mark.parametrize("seed", range(3))
def test_images_without_overlays_lose_nothing(seed):
    assert find_overlays(cells_image(seed, shape=(520, 704))) == []
    assert find_overlays(cells_image(seed, shape=(520, 704), confluent=True)) == []


@pytest.mark.parametrize("value", [0, 2, 227, 255])
def test_flat_images_are_not_overlays(value):
    assert find_overlays(np.full((300, 400), value, np.uint8)) == []
    band = np.full((300, 400), 100, np.uint8)
    band[100:140] = value  # a thick flat band is neither a thin bar nor a small box
    assert find_overlays(band) == []
