"""Connected components on runs (``clanet_store.imaging.runlength``) against ``ndi.label``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from clanet_store.imaging import runlength


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    noise = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.3, 2.0))
    return noise > np.quantile(noise, rng.uniform(0.1, 0.9))


@pytest.mark.parametrize("eight", [False, True])
def test_components_equal_ndi_label(eight):
    """Same components, same numbering (raster order of the first pixel), same areas."""
    rng = np.random.default_rng(0)
    structure = np.ones((3, 3), bool) if eight else None
    for _ in range(100):
        mask = random_mask(rng, tuple(rng.integers(1, 60, 2)))
        labels, count = ndi.label(mask, structure)
        runs = runlength.find_runs(mask)
        n, component = runlength.components(runs, eight)
        assert n == count
        painted = np.zeros(mask.shape, np.int32)
        runlength.paint(painted, runs, np.ones(component.size, bool), component + 1)
        np.testing.assert_array_equal(painted, labels)
        areas = np.bincount(component, weights=runs.length, minlength=n)
        np.testing.assert_array_equal(areas, np.bincount(labels.ravel(), minlength=n + 1)[1:])


def test_runs_and_index():
    mask = np.array([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    runs = runlength.find_runs(mask)
    starts, stops = runs.columns
    assert runs.row.tolist() == [0, 0, 1]
    assert starts.tolist() == [1, 4, 0] and stops.tolist() == [3, 5, 5]
    assert runs.index(np.array([0, 0, 1, 1]), np.array([2, 4, 0, 4])).tolist() == [0, 1, 2, 2]
    assert runlength.components(runs, eight=False)[0] == 1
    empty = runlength.find_runs(np.zeros((4, 3), bool))
    assert empty.row.size == 0 and runlength.components(empty, eight=True)[0] == 0


def test_paint_one_value_or_one_per_run():
    mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)
    runs = runlength.find_runs(mask)
    out = np.zeros(mask.shape, bool)
    runlength.paint(out, runs, np.array([True, False, True]), True)
    assert out.tolist() == [[True, True, False, False], [False, True, True, True]]
    values = np.zeros(mask.shape, np.int32)
    runlength.paint(values, runs, np.array([False, True, True]), np.array([7, 9]))
    assert values.tolist() == [[0, 0, 0, 7], [0, 9, 9, 9]]
