"""Tests of the synthetic export generator (``clanet_store.exports.synth``)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.measure import label, regionprops

from clanet_store.exports.names import parse_name
from clanet_store.exports.synth import (
    IMAGE_SIZE,
    SynthResult,
    batch_style,
    draw_overlays,
    line_style,
    line_styles,
    position_names,
    render_image,
    synth_export,
    time_stamp_text,
)

SMALL = (260, 352)  # pure-renderer checks that do not need a full frame
MEDIUM = (520, 704)  # enough cells for shape statistics, 4x cheaper than a full frame
SEED = 5


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """A small tree: two lines, one batch, one position, two time points (4 full-size images)."""
    out = tmp_path_factory.mktemp("synth") / "export"
    return synth_export(out, lines=2, batches=1, positions=1, timepoints=2, seed=SEED)


def _cell_mask(image: np.ndarray) -> np.ndarray:
    """Non-background pixels: local standard deviation over 7 x 7 above the flat background's."""
    f = image.astype(np.float32)
    mean = ndi.uniform_filter(f, 7)
    sq = ndi.uniform_filter(f * f, 7)
    return np.sqrt(np.maximum(sq - mean * mean, 0.0)) > 6.0


def _shape_stats(image: np.ndarray) -> tuple[float, float]:
    """Median area (px) and median major/minor axis ratio of the segmented objects."""
    objects = [
        p for p in regionprops(label(ndi.binary_fill_holes(_cell_mask(image)))) if p.area >= 60
    ]
    assert len(objects) >= 20, "too few objects to measure"
    areas = [p.area for p in objects]
    ratios = [p.axis_major_length / max(p.axis_minor_length, 1.0) for p in objects]
    return float(np.median(areas)), float(np.median(ratios))


def test_layout_and_names_parse_back(export: SynthResult) -> None:
    assert export.n_images == len(export.paths) == 2 * 1 * 1 * 2
    assert export.n_sequences == 2
    names = [line.name for line in export.lines]
    assert sorted(p.name for p in export.root.iterdir()) == sorted(names)
    assert any(" " in name for name in names), "a line folder with a space exercises that path"
    for path in export.paths:
        line_dir, batch_dir = path.parent.parent.name, path.parent.name
        assert path.parent.parent.parent == export.root
        batch = {b.name: b for b in export.batches[line_dir]}[batch_dir]
        parsed = parse_name(path.name)
        assert parsed.prefix == batch.prefix
        assert parsed.well in batch.wells
        assert parsed.ext == "jpg" and parsed.channel is None and parsed.crop is None
        assert parsed.elapsed_minutes in batch.elapsed_minutes(2)
    assert sorted(export.root.rglob("*.jpg")) == sorted(export.paths)


def test_images_are_full_size_grey_jpegs(export: SynthResult) -> None:
    for path in export.paths:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (IMAGE_SIZE[1], IMAGE_SIZE[0]) == (1408, 1040)
            rgb = np.asarray(im)
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
        grey = rgb[..., 0]
        assert 80 < np.median(grey[:900]) < 120, "mid-grey background like real exports"


def test_time_stamps_follow_each_batch_interval(export: SynthResult) -> None:
    for line_dir, batches in export.batches.items():
        for batch in batches:
            files = sorted((export.root / line_dir / batch.name).iterdir())
            minutes = sorted(parse_name(f.name).elapsed_minutes or 0 for f in files)
            assert minutes == [batch.start_min, batch.start_min + 60 * batch.interval_h]


def test_time_points_of_a_position_show_one_growing_field(export: SynthResult) -> None:
    """Frames of one position overlap far more than independent fields would (IoU ~0.5)."""
    for line_dir, batches in export.batches.items():
        for batch in batches:
            first, last = sorted((export.root / line_dir / batch.name).iterdir())
            a, b = (_cell_mask(np.asarray(Image.open(f))[:900, :, 0]) for f in (first, last))
            assert (a & b).sum() / (a | b).sum() > 0.65
            assert b.mean() >= a.mean() - 0.01


def test_same_seed_gives_byte_identical_files(export: SynthResult, tmp_path: Path) -> None:
    seen: list[Path] = []
    again = synth_export(
        tmp_path / "again",
        lines=1,
        batches=1,
        positions=1,
        timepoints=1,
        seed=SEED,
        on_image=seen.append,
    )
    assert seen == list(again.paths) and again.n_images == 1
    twin = export.root / again.paths[0].relative_to(again.root)
    assert again.paths[0].read_bytes() == twin.read_bytes()


def test_render_is_deterministic_for_a_generator_seed() -> None:
    line = line_style(1, seed=SEED)
    batch = batch_style(line, 1, 0, 1, seed=SEED)
    a = render_image(line, batch, 30.0, np.random.default_rng(7), size=SMALL)
    b = render_image(line, batch, 30.0, np.random.default_rng(7), size=SMALL)
    c = render_image(line, batch, 30.0, np.random.default_rng(8), size=SMALL)
    assert a.dtype == np.uint8 and a.shape == SMALL
    assert np.array_equal(a, b)
    assert np.mean(a != c) > 0.3
    assert line_style(1, seed=SEED) == line
    assert line_style(1, seed=SEED + 1) != line


def test_confluency_rises_within_a_position() -> None:
    line = line_style(0, seed=SEED)
    batch = batch_style(line, 0, 0, 1, seed=SEED)
    confluency = [
        _cell_mask(render_image(line, batch, t, np.random.default_rng(3), MEDIUM, False)).mean()
        for t in (0.0, 48.0, 120.0)
    ]
    assert confluency[0] < confluency[1] < confluency[2]
    assert confluency[2] - confluency[0] > 0.2


def test_a_position_keeps_its_cells_over_time() -> None:
    """Consecutive frames of one position overlap far more than frames of two positions."""
    line = line_style(2, seed=SEED)
    batch = batch_style(line, 2, 0, 1, seed=SEED)

    def mask(t: float, position: int) -> np.ndarray:
        rng = np.random.default_rng(position)
        return _cell_mask(render_image(line, batch, t, rng, MEDIUM, overlays=False))

    first, later, elsewhere = mask(30.0, 0), mask(32.0, 0), mask(32.0, 1)

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    assert iou(first, later) > iou(first, elsewhere) + 0.2


def test_morphology_parameters_show_in_the_images() -> None:
    base = line_style(0, seed=SEED)
    sparse = dataclasses.replace(batch_style(base, 0, 0, 1, seed=SEED), seeding_per_mm2=80.0)
    scattered = dataclasses.replace(base, clustering=0.2, round_fraction=0.02, ruffle=0.0)

    def stats(**changes: float) -> tuple[float, float]:
        line = dataclasses.replace(scattered, **changes)
        return _shape_stats(render_image(line, sparse, 30.0, np.random.default_rng(3), MEDIUM))

    small_round = stats(radius_px=9.0, elongation=1.0)
    large_round = stats(radius_px=16.0, elongation=1.0)
    small_long = stats(radius_px=9.0, elongation=3.5)
    assert large_round[0] > 1.5 * small_round[0]
    assert small_long[1] > 1.2 * small_round[1]


def test_generated_lines_differ_in_parameters_and_images() -> None:
    styles = line_styles(8, seed=SEED)
    assert len({s.name for s in styles}) == 8
    visible = ("radius_px", "elongation", "clustering", "rim", "body", "round_fraction")
    spans = {k: np.ptp([getattr(s, k) for s in styles]) for k in visible}
    for a, b in itertools.combinations(styles, 2):
        far = [k for k in visible if abs(getattr(a, k) - getattr(b, k)) > 0.15 * spans[k]]
        assert len(far) >= 2, (a.name, b.name)
    batch = batch_style(styles[0], 0, 0, 1, seed=SEED)
    area_0, ratio_0 = _shape_stats(
        render_image(styles[0], batch, 30.0, np.random.default_rng(3), MEDIUM, False)
    )
    area_1, ratio_1 = _shape_stats(
        render_image(styles[1], batch, 30.0, np.random.default_rng(3), MEDIUM, False)
    )
    assert max(area_0 / area_1, area_1 / area_0, ratio_0 / ratio_1, ratio_1 / ratio_0) > 1.25


def test_batch_effects_vary_between_batches() -> None:
    line = line_style(0, seed=SEED)
    batches = [batch_style(line, 0, b, 1, seed=SEED) for b in range(6)]
    for field in ("seeding_per_mm2", "brightness", "contrast", "blur_px", "noise", "start_min"):
        assert len({getattr(b, field) for b in batches}) > 1, field
    assert len({b.interval_h for b in batches}) > 1
    assert all(1 <= b.interval_h <= 8 for b in batches)
    assert len({b.name for b in batches}) == 6
    backgrounds = [
        np.median(render_image(line, b, 0.0, np.random.default_rng(1), SMALL, False))
        for b in batches
    ]
    assert np.ptp(backgrounds) > 3.0


def test_batch_effects_scale_toward_a_typical_batch(tmp_path: Path) -> None:
    """0.1 keeps each batch's direction at a tenth of its distance; 0 makes batches alike but
    for their names and wells; ``size`` renders small frames."""
    line = line_style(0, seed=SEED)
    full, mild, none = (
        [batch_style(line, 0, b, 2, SEED, batch_effects=s) for b in range(4)] for s in (1, 0.1, 0)
    )
    for a, b, c in zip(full, mild, none, strict=True):
        assert (b.name, b.wells, b.prefix) == (a.name, a.wells, a.prefix)
        assert b.brightness - 98 == pytest.approx(0.1 * (a.brightness - 98))
        assert np.log(b.contrast) == pytest.approx(0.1 * np.log(a.contrast))
        assert b.interval_h == round(4 + 0.1 * (a.interval_h - 4))
        assert dataclasses.replace(c, name="", prefix="", wells=()) == dataclasses.replace(
            none[0], name="", prefix="", wells=()
        )
    with pytest.raises(ValueError, match="batch_effects"):
        batch_style(line, 0, 0, 1, SEED, batch_effects=1.5)
    small = synth_export(tmp_path / "s", 1, 1, 1, 1, SEED, batch_effects=0, size=SMALL)
    assert Image.open(small.paths[0]).size == SMALL[::-1]


def test_positions_follow_both_well_conventions() -> None:
    line = line_style(0, seed=SEED)
    one_well = batch_style(line, 0, 0, 3, seed=SEED)
    many_wells = batch_style(line, 0, 1, 3, seed=SEED)
    assert len(one_well.wells) == 1 and len(set(many_wells.wells)) == 3
    same = [position_names(one_well, p, 2)[0] for p in range(3)]
    assert {n.well for n in same} == {one_well.wells[0]}
    assert [n.location for n in same] == [1, 2, 3]
    own = [position_names(many_wells, p, 2)[0] for p in range(3)]
    assert [n.well for n in own] == list(many_wells.wells)
    assert {n.location for n in own} == {1}
    series = position_names(many_wells, 0, 4)
    steps = np.diff([n.elapsed_minutes or 0 for n in series])
    assert (steps == 60 * many_wells.interval_h).all()
    assert many_wells.duration_h(4) == 3 * many_wells.interval_h


def test_overlays_only_bottom_left_and_bottom_right() -> None:
    minutes = (3 * 24 + 20) * 60 + 14
    flat = np.full(IMAGE_SIZE, 100, dtype=np.uint8)
    drawn = draw_overlays(flat, minutes)
    height, width = IMAGE_SIZE
    rows, cols = np.nonzero(drawn != flat)
    bottom_left = (rows >= height - 100) & (cols < 480)
    bottom_right = (rows >= height - 40) & (cols >= width - 180)
    assert (bottom_left | bottom_right).all(), "overlay pixels outside the two corners"
    assert bottom_left.sum() > 1000 and bottom_right.sum() > 3000
    # real geometry: black box rows 1009-1037, columns 1241-1397 with white text; bar rows 984-986
    box = drawn[1009:1038, 1241:1398]
    assert (box == 0).mean() > 0.6 and (box == 255).sum() > 100
    assert (drawn[984:987, 75:385] == 222).all()
    assert time_stamp_text(minutes) == "3d 20h 14m"
    assert time_stamp_text(0) == "0d 0h 0m"


def test_render_burns_in_the_overlays_at_its_time() -> None:
    line = line_style(0, seed=SEED)
    batch = batch_style(line, 0, 0, 1, seed=SEED)
    size = (300, 720)
    burned = render_image(line, batch, 26.5, np.random.default_rng(4), size)
    plain = render_image(line, batch, 26.5, np.random.default_rng(4), size, overlays=False)
    assert np.array_equal(burned, draw_overlays(plain, 26 * 60 + 30))
    assert not np.array_equal(burned, plain)


@pytest.mark.parametrize(
    "counts",
    [
        {"lines": 0},
        {"batches": -1},
        {"positions": 201},
        {"timepoints": 2.5},
        {"lines": True},
        {"seed": -1},
    ],
)
def test_invalid_counts_are_refused(tmp_path: Path, counts: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        synth_export(tmp_path / "out", **counts)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_existing_non_empty_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("not ours")
    with pytest.raises(ValueError, match="already exists"):
        synth_export(tmp_path, lines=1, batches=1, positions=1, timepoints=1)
    with pytest.raises(ValueError, match="already exists"):
        synth_export(tmp_path / "keep.txt", lines=1, batches=1, positions=1, timepoints=1)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
