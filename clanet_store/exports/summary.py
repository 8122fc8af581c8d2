"""What a manifest holds: lines x batches x sequences x images, time range, imaging interval."""

from __future__ import annotations

import polars as pl

BATCH_KEY = ("cell_line", "batch")


def batch_summary(manifest: pl.DataFrame) -> pl.DataFrame:
    """One row per (cell_line, batch): wells, sequences, images, time range, median interval (h).

    The interval is the median gap between consecutive images of the same sequence; null for a
    batch whose sequences all have a single image.
    """
    gaps = (
        manifest.sort("sequence_id", "timepoint_h")
        .with_columns(gap_h=pl.col("timepoint_h").diff().over("sequence_id"))
        .group_by(BATCH_KEY)
        .agg(median_interval_h=pl.col("gap_h").drop_nulls().median())
    )
    counts = manifest.group_by(BATCH_KEY).agg(
        wells=pl.col("well").n_unique(),
        sequences=pl.col("sequence_id").n_unique(),
        images=pl.len(),
        t_min_h=pl.col("timepoint_h").min(),
        t_max_h=pl.col("timepoint_h").max(),
    )
    return counts.join(gaps, on=BATCH_KEY).sort(BATCH_KEY)


def export_summary(manifest: pl.DataFrame) -> dict:
    """Totals of a manifest as plain Python values (JSON-ready)."""
    empty = manifest.height == 0
    return {
        "cell_lines": manifest["cell_line"].n_unique(),
        "batches": manifest.select(BATCH_KEY).n_unique() if not empty else 0,
        "sequences": manifest["sequence_id"].n_unique(),
        "images": manifest.height,
        "t_min_h": None if empty else float(manifest["timepoint_h"].min()),
        "t_max_h": None if empty else float(manifest["timepoint_h"].max()),
    }
