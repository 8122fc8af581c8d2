"""``info``: what a store holds (with its encoders' health), as a typed result for the command
line."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from clanet_store.pipelines.evaluate_encoder import EncoderSummary, encoder_summaries
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.summary import store_info


@dataclass(frozen=True)
class InfoReport:
    """What ``info`` prints (the JSON keys of ``clanet-store info --format json``, in order)."""

    store: str
    cell_lines: int
    batches: int
    sequences: int
    images: int
    patches: int
    rejected: int
    t_min_h: float | None
    t_max_h: float | None
    size_bytes: int
    patch_array_shape: list[int]
    table_versions: dict[str, int]
    store_version: int
    table_layouts: dict[str, Any]
    per_batch: list[dict[str, Any]]  # one row per (cell line, batch)
    rejects: list[dict[str, Any]]  # path, reason
    encoders: tuple[EncoderSummary, ...]

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["encoders"] = [e.as_dict() for e in self.encoders]
        return out


def info(location: StoreLocation) -> InfoReport:
    """Counts per cell line and batch, time range, size, table versions, rejects (`store_info`)
    and every encoder's health and latest evaluation (`encoder_summaries`)."""
    store = EmbeddingStore(location)
    return InfoReport(**store_info(store.patch_store), encoders=tuple(encoder_summaries(store)))
