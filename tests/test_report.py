"""The report's pure pieces: intervals and tables from hand-made frames, figures, escaping."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
from PIL import Image

from clanet_store.report import collect, figures, page


def _images() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "cell_line": ["A", "A", "A", "A", "B", "B"],
            "batch": ["b1", "b1", "b1", "b2", "b1", "b1"],
            "sequence_id": ["s1", "s1", "s1", "s2", "s3", "s3"],
            "timepoint_h": [4.0, 0.0, 2.5, 1.0, 0.0, 6.0],
            "confluency": [0.3, 0.1, 0.2, 0.5, 0.4, 0.6],
        }
    )


def test_imaging_intervals_follow_time_order_within_each_sequence():
    intervals = collect.imaging_intervals(_images()).sort("cell_line", "interval_h")
    assert intervals.to_dicts() == [
        {"cell_line": "A", "batch": "b1", "interval_h": 1.5},
        {"cell_line": "A", "batch": "b1", "interval_h": 2.5},
        {"cell_line": "B", "batch": "b1", "interval_h": 6.0},
    ]  # s2 has one image: no interval


def test_dataset_table_counts_per_cell_line():
    table = collect.dataset_table(_images())
    assert table.to_dicts() == [
        {
            "cell_line": "A",
            "batches": 2,
            "sequences": 2,
            "images": 4,
            "t_min_h": 0.0,
            "t_max_h": 4.0,
        },
        {
            "cell_line": "B",
            "batches": 1,
            "sequences": 1,
            "images": 2,
            "t_min_h": 0.0,
            "t_max_h": 6.0,
        },
    ]


def test_busiest_line_prefers_more_batches():
    keys = pl.DataFrame(
        {"cell_line": ["A", "B", "B", "A", "A"], "batch": ["1", "1", "2", "1", "1"]}
    )
    assert collect.busiest_line(keys) == "B"


def _is_png(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_figures_are_pngs():
    images = _images()
    assert min(_is_png(figures.confluency_over_time(images))) > 100
    assert min(_is_png(figures.imaging_intervals(collect.imaging_intervals(images)))) > 50
    xy = np.random.default_rng(0).normal(size=(30, 2))
    assert min(_is_png(figures.projection(xy, ["a", "b", "c"] * 10, "t", "line", "t-SNE"))) > 100
    assert min(_is_png(figures.confusion(np.array([[2, 1], [0, 3]]), ["A", "B"], "t"))) > 100
    curve = [{"fraction": f, "natural": f, "reversed": 1 - f} for f in (0.01, 0.5, 1.0)]
    assert min(_is_png(figures.accuracy_by_fraction({"m": curve}))) > 100


def test_tsne_gives_two_coordinates_per_row():
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    xy = collect.tsne(x)
    assert xy.shape == (40, 2) and np.isfinite(xy).all()


def test_page_escapes_user_text():
    html = page.document(
        "t",
        "s",
        [
            page.section(
                "x", page.table([["<script>alert(1)</script>", 0.5]], ["a", "b"]), anchor="x"
            )
        ],
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert page.text(0.123456) == "0.1235"
