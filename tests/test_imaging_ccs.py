"""Cell Cluster-level Selection (SPEC 3): each rule on small constructed masks, then the whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage.feature import local_binary_pattern as skimage_lbp

from clanet_store.imaging import ccs
from clanet_store.imaging.draw import OUTLINE, draw_extraction
from clanet_store.imaging.extract import EXTRACTOR_VERSION, Extraction, extract, extractor_params
from clanet_store.imaging.params import FIXED, CCSParams


def noise(shape, seed=0, lo=0, hi=256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.uint8)


def check_boxes(boxes: np.ndarray, mask: np.ndarray, size: int, exclude=None) -> None:
    """Every box is size x size, inside, sorted by density, with density = mask mean inside."""
    h, w = mask.shape
    assert boxes.dtype == ccs.BOX_DTYPE
    np.testing.assert_array_equal(boxes["rank"], np.arange(boxes.size))
    assert (boxes["w"] == size).all() and (boxes["h"] == size).all()
    assert (boxes["x"] >= 0).all() and (boxes["x"] <= w - size).all()
    assert (boxes["y"] >= 0).all() and (boxes["y"] <= h - size).all()
    assert (np.diff(boxes["density"]) <= 0).all()
    for b in boxes:
        window = (slice(b["y"], b["y"] + size), slice(b["x"], b["x"] + size))
        assert b["density"] == np.float32(mask[window].mean())
        assert exclude is None or not exclude[window].any()


# --- histograms and LBP --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bins", "starts"), [(FIXED.grey_bins, ccs._GREY_STARTS), (FIXED.lbp_bins, ccs._LBP_STARTS)]
)
def test_bin_starts_match_numpy_histogram(bins, starts):
    values = np.random.default_rng(0).integers(0, 256, (3, 500)).astype(np.uint8)
    expected = [np.histogram(v, bins, (0, 255))[0] for v in values]
    np.testing.assert_array_equal(ccs._binned_counts(values, starts), expected)
    for v in range(256):  # every single value, edges included
        one = np.array([[v]], np.uint8)
        assert (
            np.histogram([v], bins, (0, 255))[0].argmax()
            == ccs._binned_counts(one, starts)[0].argmax()
        )


def lbp_ties(grey: np.ndarray) -> np.ndarray:
    """Pixels where a diagonal LBP sample equals the centre exactly (skimage's rounding decides)."""
    p = np.pad(grey, 1).astype(np.int64)
    h, w = grey.shape
    c = p[1:-1, 1:-1]
    tie = np.zeros(grey.shape, bool)
    for dy in (-1, 1):
        for dx in (-1, 1):
            edges = p[1 : h + 1, 1 + dx : w + 1 + dx] + p[1 + dy : h + 1 + dy, 1 : w + 1] - 2 * c
            corner = p[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] - c
            tie |= 29289 * edges + 70711 * corner == 0
    return tie


@pytest.mark.parametrize("levels", [256, 5, 2])
def test_lbp_equals_skimage_except_exact_ties(levels):
    grey = (noise((60, 70), seed=levels) // (256 // levels) * (255 // max(levels - 1, 1))).astype(
        np.uint8
    )
    ours = ccs.local_binary_pattern(grey)
    theirs = skimage_lbp(grey, FIXED.lbp_points, FIXED.lbp_radius).astype(np.uint8)
    differ = ours != theirs
    assert not (differ & ~lbp_ties(grey)).any()
    if levels == 256:
        assert not differ.any()


def test_lbp_of_flat_image_sets_every_bit_inside():
    codes = ccs.local_binary_pattern(np.full((5, 6), 9, np.uint8))
    assert (codes[1:-1, 1:-1] == 255).all()  # every neighbour >= centre
    assert codes[0, 0] == 0b11000001  # right, down-right and down are inside; the rest count as 0


def test_grey_histograms_of_different_crops_differ():
    """The reference bins a [0, 1] float image over 0..255: every crop lands in bin 0. Not here."""
    rng = np.random.default_rng(1)
    grey = np.concatenate(
        [rng.integers(20, 60, (112, 112)), rng.integers(180, 240, (112, 112))], axis=1
    ).astype(np.uint8)
    ys, xs = np.array([0, 0]), np.array([0, 112])
    grey_hist, _ = ccs.box_histograms(grey, ys, xs, 112)
    assert grey_hist.sum(axis=1).tolist() == [112 * 112] * 2
    assert np.minimum(grey_hist[0], grey_hist[1]).sum() == 0  # no grey level in common
    buggy = [np.histogram(grey[:, x : x + 112] / 255, 25, (0, 255))[0] for x in (0, 112)]
    np.testing.assert_array_equal(buggy[0], buggy[1])  # what the reference bug would see
    u = ccs.similarity(grey, np.array([0, 0]), np.array([0, 56]), np.array([0]), np.array([1]), 112)
    assert u[0] < 1.0 + 1.0 + 1.0 / 3.0 - 0.4  # the grey term is about 0.5, not 1


def test_similarity_equals_hand_computation():
    size = 4
    grey = noise((6, 9), seed=2)
    ys, xs = np.array([0, 1, 2]), np.array([0, 2, 5])
    first, second = ccs.overlapping_pairs(ys, xs, size)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 1), (1, 2)]
    lbp = skimage_lbp(grey, 8, 1)  # random grey values: no exact ties
    expected = []
    for i, j in [(0, 1), (1, 2)]:
        crops = [(slice(ys[n], ys[n] + size), slice(xs[n], xs[n] + size)) for n in (i, j)]
        g = [np.histogram(grey[c], 25, (0, 255))[0] / 16 for c in crops]
        t = [np.histogram(lbp[c], 10, (0, 255))[0] / 16 for c in crops]
        inter = (size - abs(ys[i] - ys[j])) * (size - abs(xs[i] - xs[j]))
        iou = inter / (2 * size * size - inter)
        expected.append(np.minimum(*g).sum() + np.minimum(*t).sum() + iou)
    np.testing.assert_allclose(ccs.similarity(grey, ys, xs, first, second, size), expected)
    assert expected[0] > expected[1]  # (0, 1) overlap 3 x 2 = 6 px, IoU 6 / 26; (1, 2) 3 x 1


# --- candidate boxes: MassCenter and tiles -------------------------------------------------------


def test_masscenter_box_is_centred_and_clamped():
    size = 8
    mask = np.zeros((50, 60), bool)
    mask[10:13, 20:23] = True  # centre (11, 21): box at floor(11 - 4), floor(21 - 4)
    mask[0:2, 0:2] = True  # centre (0.5, 0.5): clamped to 0
    mask[48:50, 57:60] = True  # centre (48.5, 58): clamped to (50 - 8, 60 - 8)
    ys, xs = ccs.candidate_boxes(mask, size)
    assert list(zip(ys.tolist(), xs.tolist(), strict=True)) == [(0, 0), (7, 17), (42, 52)]


def test_masscenter_uses_all_mask_pixels_in_the_region_box():
    mask = np.zeros((40, 40), bool)
    mask[5, 5:30] = mask[5:30, 5] = True  # an L: its box is rows 5-29, columns 5-29
    mask[27:30, 27:30] = True  # another region inside the L's box pulls its centre
    ys, xs = ccs.candidate_boxes(mask, 4)
    rows, cols = np.nonzero(mask[5:30, 5:30])
    centre_y, centre_x = rows.mean() + 5, cols.mean() + 5
    assert (ys[0], xs[0]) == (int(np.floor(centre_y - 2)), int(np.floor(centre_x - 2)))


def test_tiles_start_at_twice_the_box_area():
    size = 4
    mask = np.zeros((20, 30), bool)
    mask[3:7, 5:13] = True  # 4 x 8 = 32 = 2 * 4 * 4 pixels: tiles
    ys, xs = ccs.candidate_boxes(mask, size)
    # MassCenter (4.5, 8.5) -> (2, 6), then the 1 x 2 tiles from the box corner (3, 5)
    assert list(zip(ys.tolist(), xs.tolist(), strict=True)) == [(2, 6), (3, 5), (3, 9)]
    mask[4, 6] = False  # 31 pixels, same bounding box: no tiles
    ys, xs = ccs.candidate_boxes(mask, size)
    assert ys.size == 1


def test_tiles_cover_the_box_and_are_clamped():
    size = 4
    mask = np.zeros((12, 20), bool)
    mask[5:12, 11:20] = True  # 7 x 9 box at the bottom-right corner: 2 x 3 tiles
    ys, xs = ccs.candidate_boxes(mask, size)
    tiles = sorted(zip(ys[1:].tolist(), xs[1:].tolist(), strict=True))
    assert tiles == [(5, 11), (5, 15), (5, 16), (8, 11), (8, 15), (8, 16)]


def test_only_the_largest_regions_give_boxes():
    mask = np.zeros((200, 200), bool)
    for i in range(CCSParams().max_regions + 5):  # 45 dots, the first 5 (in raster order) one pixel
        y, x = divmod(i, 9)
        mask[y * 20 + 5, x * 20 + 5 : x * 20 + (6 if i < 5 else 8)] = True
    ys, xs = ccs.candidate_boxes(mask, 4)
    assert ys.size == CCSParams().max_regions
    # on the first row only the 3-pixel dots 5..8 (box x = 20 i + 4), not the single pixels
    assert sorted(xs[ys == 3].tolist()) == [104, 124, 144, 164]


# --- removal and ranking -------------------------------------------------------------------------


def test_removal_rule():
    first, second = np.array([0, 0, 1, 2]), np.array([1, 2, 2, 3])
    u = np.array([3.0, 1.0, 2.5, 2.5])  # mean 2.25: pairs 0, 2, 3 are similar
    counts = np.array([5, 7, 7, 1])
    # (0, 1): 0 has the lower density -> deleted; (1, 2): equal density -> the later, 2;
    # (2, 3): 2 is already deleted -> 3 survives although its density is the lowest
    deleted = ccs.removal(first, second, u, counts)
    assert np.flatnonzero(deleted).tolist() == [0, 2]


def test_removal_counts_the_mean_itself_as_similar():
    u = np.full(3, 0.1) + np.array([0.0, 0.2, 0.2]) - np.array([0.0, 0.2, 0.2])
    deleted = ccs.removal(np.array([0, 2, 4]), np.array([1, 3, 5]), u, np.array([1, 2] * 3))
    assert np.flatnonzero(deleted).tolist() == [0, 2, 4]
    assert not ccs.removal(np.array([], int), np.array([], int), np.zeros(0), np.ones(2)).any()


def test_ranking_by_density_then_farthest_first():
    ys = np.array([0, 0, 0, 50, 20])
    xs = np.array([0, 10, 100, 50, 20])
    counts = np.array([10, 8, 8, 8, 3])
    texture = np.zeros(5, int)
    # 0 first (densest); then among 1, 2, 3 the farthest from 0 is 2, then 3 (min distance
    # 5000 vs 100 for 1), then 1; 4 last (lowest density)
    assert ccs.rank(ys, xs, counts, texture, k=5).tolist() == [0, 2, 3, 1, 4]
    assert ccs.rank(ys, xs, counts, texture, k=2).tolist() == [0, 2]


def test_ranking_ties_in_distance_go_to_texture_then_creation_order():
    ys, xs = np.array([0, 0, 0, 0]), np.array([0, 10, 20, 30])
    counts = np.ones(4, int)
    # nothing ranked yet: the most textured box first (2), then the farthest from it (0); 1 and 3
    # are then both 10 px from a ranked box and equally textured: creation order
    assert ccs.rank(ys, xs, counts, np.array([0, 0, 5, 0]), k=4).tolist() == [2, 0, 1, 3]
    assert ccs.rank(ys, xs, counts, np.array([0, 1, 0, 0]), k=4)[:2].tolist() == [1, 3]
    assert ccs.rank(ys, xs, counts, np.zeros(4, int), k=4)[:2].tolist() == [0, 3]


# --- select_patches ------------------------------------------------------------------------------


def test_no_cells_no_boxes():
    grey = noise((300, 300))
    assert ccs.select_patches(grey, np.zeros(grey.shape, bool)).size == 0
    assert ccs.select_patches(grey[:100], np.ones((100, 300), bool)).size == 0  # too small
    assert ccs.select_patches(grey, np.ones(grey.shape, bool), k=0).size == 0


def test_fewer_regions_than_k_give_fewer_boxes():
    grey = noise((400, 400), seed=3)
    mask = np.zeros(grey.shape, bool)
    for y, x in [(50, 50), (50, 300), (300, 200)]:
        mask[y : y + 20, x : x + 20] = True
    boxes = ccs.select_patches(grey, mask, k=10)
    assert boxes.size == 3
    check_boxes(boxes, mask, 112)


def test_one_region_covering_everything_gives_spread_tiles():
    grey = noise((448, 672), seed=4)
    mask = np.ones(grey.shape, bool)
    boxes = ccs.select_patches(grey, mask, k=20)
    check_boxes(boxes, mask, 112)
    assert boxes.size == 20 and (boxes["density"] == 1).all()
    corners = np.stack([boxes["y"][:4], boxes["x"][:4]], axis=1).astype(float)
    gaps = np.hypot(*(corners[:, None] - corners[None, :]).transpose(2, 0, 1))
    assert gaps[np.triu_indices(4, 1)].min() >= 224  # the first four are far apart, not a block


def test_boxes_never_touch_excluded_pixels():
    grey = noise((400, 500), seed=5)
    mask = np.zeros(grey.shape, bool)
    mask[330:390, 20:90] = True  # cells right above and inside an overlay corner
    mask[100:140, 300:340] = True
    exclude = np.zeros(grey.shape, bool)
    exclude[350:400, 0:150] = True
    exclude[:, 470:] = True  # a full-height strip: boxes there must move sideways or go
    boxes = ccs.select_patches(grey, mask, exclude=exclude)
    check_boxes(boxes, mask & ~exclude, 112, exclude)
    assert boxes.size == 2
    assert boxes["y"].tolist()[1] == 350 - 112  # moved up to just above the overlay


def test_box_in_a_fully_excluded_column_is_dropped():
    ys, xs = ccs.avoid_excluded(
        np.array([10, 10]),
        np.array([0, 50]),
        np.pad(np.ones((200, 10), bool), ((0, 0), (0, 90))),
        30,
    )
    assert list(zip(ys.tolist(), xs.tolist(), strict=True)) == [(10, 50)]


def test_select_patches_on_cells(tmp_path):
    rng = np.random.default_rng(6)
    grey = rng.integers(90, 110, (500, 700)).astype(np.uint8)
    mask = np.zeros(grey.shape, bool)
    for _ in range(60):
        y, x, r = rng.integers(0, 500), rng.integers(0, 700), rng.integers(5, 25)
        yy, xx = np.ogrid[:500, :700]
        mask |= (yy - y) ** 2 + (xx - x) ** 2 < r * r
    grey[mask] = rng.integers(20, 220, mask.sum())
    boxes = ccs.select_patches(grey, mask, k=15)
    check_boxes(boxes, mask, 112)
    assert boxes.size == 15 and boxes["density"][0] > mask.mean()
    patches = ccs.crop_patches(grey, boxes)
    assert patches.shape == (15, 112, 112) and patches.dtype == np.uint8
    b = boxes[3]
    np.testing.assert_array_equal(patches[3], grey[b["y"] : b["y"] + 112, b["x"] : b["x"] + 112])
    assert ccs.crop_patches(grey, boxes[:0]).shape == (0, 112, 112)
    wrong = boxes.copy()
    wrong["w"][0] = 100
    with pytest.raises(ValueError, match="112"):
        ccs.crop_patches(grey, wrong)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ccs.select_patches(noise((200, 200)), np.ones((200, 201), bool))


# --- extract, parameters, drawing ----------------------------------------------------------------


def test_extract_bundles_everything():
    from test_imaging_mask import add_overlays, cells_image

    grey = add_overlays(
        cells_image(11, shape=(520, 704)), bar_y=440, bar_x=20, box_y=480, box_x=520
    )
    result = extract(grey, k=12)
    assert isinstance(result, Extraction)
    assert result.exclude.any() and not (result.mask & result.exclude).any()
    check_boxes(result.boxes, result.mask, 112, result.exclude)
    assert 0 < result.boxes.size <= 12 and result.patches.shape == (result.boxes.size, 112, 112)
    assert result.mask_fraction == result.mask.mean()
    assert result.confluency == result.mask[~result.exclude].mean() > result.mask_fraction
    with pytest.raises(Exception, match=r"frozen|assign"):
        result.confluency = 0.0  # type: ignore[misc]


def test_constant_image_extracts_nothing():
    result = extract(np.full((520, 704), 120, np.uint8))
    assert result.boxes.size == 0 and result.patches.shape == (0, 112, 112)
    assert result.confluency == 0.0 and not result.exclude.any()


def test_extractor_params_are_recorded():
    params = extractor_params()
    assert params["version"] == EXTRACTOR_VERSION
    assert params["ccs"]["patch_size"] == 112 and params["ccs"]["k"] == ccs.K_STORED
    assert params["mask"]["percentiles"] == [0.2, 99.8]
    assert json.loads(json.dumps(params)) == params


def test_draw_extraction(tmp_path):
    from test_imaging_mask import cells_image

    grey = cells_image(12, shape=(400, 500))
    result = extract(grey, k=5)
    draw_extraction(grey, result, tmp_path / "boxes.png")
    picture = np.asarray(Image.open(tmp_path / "boxes.png"))
    assert picture.shape == (400, 500, 3)
    b = result.boxes[0]
    edge = picture[b["y"], b["x"] + 20 : b["x"] + 100]  # top side of the best box, past its label
    assert (edge == (255, 0, 0)).all()
    top_edge = result.mask & ~np.roll(result.mask, 1, axis=0)  # part of the outline
    assert (picture[top_edge] == OUTLINE).all(axis=1).mean() > 0.9  # cyan unless under a box


def test_method_parameters_are_data_and_change_the_extractor_key():
    from dataclasses import asdict, fields

    from test_imaging_mask import cells_image

    from clanet_store.imaging.params import (
        STEPS,
        DecodeParams,
        ExtractorParams,
        MaskParams,
        OverlayParams,
        crop_rows,
        parse_params,
    )

    default = extractor_params()
    assert default["version"] == EXTRACTOR_VERSION  # default parameters: the plain version
    assert default["mask"]["exclusion"] == "overlays"
    assert default["ccs"]["tie_break"] == "farthest-first"
    # every field of every step's dataclass is recorded, none by hand
    for step, kind in STEPS.items():
        assert {f.name for f in fields(kind)} <= set(default[step])
    assert default["fixed"] == asdict(FIXED)
    changed = extractor_params(params=parse_params(mask={"min_object": 200}))
    assert changed["mask"]["min_object"] == 200 and changed["version"] != EXTRACTOR_VERSION
    variants = [
        ExtractorParams(mask=MaskParams(min_object=200)),
        ExtractorParams(ccs=CCSParams(tie_break="creation-order")),
        ExtractorParams(ccs=CCSParams(max_regions=10)),
        ExtractorParams(mask=MaskParams(canny_sigma=2.0)),
        ExtractorParams(mask=MaskParams(canny_high=0.3)),
        ExtractorParams(mask=MaskParams(otsu_bins=128)),
        ExtractorParams(overlays=OverlayParams(box_margin=5)),
        ExtractorParams(overlays=OverlayParams(bar_min_grey=200)),
        ExtractorParams(decode=DecodeParams(scale_percentiles=(1, 99))),
        ExtractorParams(),
    ]
    assert len({params.key(EXTRACTOR_VERSION) for params in variants}) == len(variants)
    with pytest.raises(ValueError, match="unknown tie_break"):
        CCSParams(tie_break="random")
    with pytest.raises(ValueError, match="Canny thresholds"):
        MaskParams(canny_low=0.3, canny_high=0.2)
    with pytest.raises(TypeError):
        parse_params(overlays={"bar_colour": 1})

    grey = cells_image(30, shape=(520, 704))
    cropped = extract(grey, mask_params=MaskParams(exclusion="crop-150"))
    assert cropped.exclude[-crop_rows(520) :].all() and not cropped.exclude[: -crop_rows(520)].any()
    assert (cropped.boxes["y"] + cropped.boxes["h"] <= 520 - crop_rows(520)).all()
    big = extract(grey, mask_params=MaskParams(min_object=5000))
    assert big.mask_fraction <= extract(grey).mask_fraction


def test_creation_order_tie_break_is_the_reference_rule():
    confluent = np.zeros((400, 500), bool)
    confluent[:, :] = True
    grey = np.random.default_rng(0).integers(0, 256, (400, 500), dtype=np.uint8)
    spread = ccs.select_patches(grey, confluent, k=6)
    ref = ccs.select_patches(grey, confluent, k=6, params=CCSParams(tie_break="creation-order"))
    assert (spread["density"] == 1).all() and (ref["density"] == 1).all()
    assert {(int(b["y"]), int(b["x"])) for b in spread} != {(int(b["y"]), int(b["x"])) for b in ref}
    ys, xs = ccs.candidate_boxes(confluent, 112)  # creation order, before any removal
    created = list(zip(ys.tolist(), xs.tolist(), strict=True))
    order = [created.index((int(b["y"]), int(b["x"]))) for b in ref]
    assert order == sorted(order)  # equal densities keep their creation order
