"""What a store holds: counts per cell line and batch, time range, size, table versions, rejects."""

from __future__ import annotations

from typing import Any

import polars as pl

from clanet_store.stores.patch_store import PatchStore

_IMAGE_COLUMNS = (
    "image_id",
    "path",
    "status",
    "error",
    "cell_line",
    "batch",
    "sequence_id",
    "timepoint_h",
    "patch_count",
    "confluency",
)


def store_info(store: PatchStore) -> dict[str, Any]:
    """A JSON-ready description of the store."""
    images = store.query("images").select(*_IMAGE_COLUMNS).to_polars()
    ok = images.filter(pl.col("status") == "ok")
    per_batch = (
        ok.group_by("cell_line", "batch")
        .agg(
            sequences=pl.col("sequence_id").n_unique(),
            images=pl.len(),
            patches=pl.col("patch_count").cast(pl.Int64).sum(),
            t_min_h=pl.col("timepoint_h").min(),
            t_max_h=pl.col("timepoint_h").max(),
            mean_confluency=pl.col("confluency").mean(),
        )
        .sort("cell_line", "batch")
    )
    rejects = images.filter(pl.col("status") == "rejected").select("path", "error").sort("path")
    versions = {name: store.table(name).version for name in ("images", "patches")}
    return {
        "store": str(store.path),
        "cell_lines": ok["cell_line"].n_unique(),
        "batches": ok.select("cell_line", "batch").n_unique() if ok.height else 0,
        "sequences": ok["sequence_id"].n_unique(),
        "images": ok.height,
        "patches": len(store.query("patches").to_numpy("row")),  # committed rows only
        "rejected": rejects.height,
        "t_min_h": ok["timepoint_h"].min(),
        "t_max_h": ok["timepoint_h"].max(),
        "size_bytes": store.size_on_disk(),
        "patch_array_shape": list(store.array.shape),
        "table_versions": versions,
        "store_version": store.meta["store_version"],
        "table_layouts": store.meta["tables"],
        "per_batch": per_batch.to_dicts(),
        "rejects": rejects.rename({"error": "reason"}).to_dicts(),
    }
