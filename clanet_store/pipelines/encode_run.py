"""The ``encode`` command as one call: build the encoder it was asked for, `encode`, then check
the health of the model's stored embeddings (issue 18: every encode ends with a health line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clanet_store.models.health import EmbeddingHealth
from clanet_store.models.protocol import Encoder
from clanet_store.pipelines.encode import EncodeReport, classic_encoder, encode, load_encoder
from clanet_store.pipelines.encode_workers import Cluster
from clanet_store.pipelines.evaluate_encoder import sample_health
from clanet_store.progress import Progress
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.location import StoreLocation


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to embed with: ``vit`` (local ``weights`` or a seeded random init of
    ``arch``) or ``classic`` (the training-free descriptor, fitted on the store's first encode)."""

    kind: str = "vit"
    weights: Path | None = None
    arch: str | None = None
    device: str = "auto"
    seed: int = 0
    normalize: bool = False


@dataclass(frozen=True)
class EncodeRun:
    """An encode and the health of the model's embeddings afterwards (None: under two rows)."""

    report: EncodeReport
    health: EmbeddingHealth | None

    def as_dict(self) -> dict[str, Any]:
        health = self.health.as_dict() if self.health else None
        return {**self.report.as_dict(), "health": health}


def build(spec: EncoderSpec, store_path: str | Path | StoreLocation, remote: bool) -> Encoder:
    """The encoder of ``spec``; for a cluster (``remote``) a ViT stays on the CPU: each worker
    moves the weights it is sent to its own device."""
    if spec.kind == "classic":
        return classic_encoder(store_path)
    device = "cpu" if remote else spec.device
    return load_encoder(spec.weights, spec.arch, device, spec.seed, spec.normalize)


def encode_store(
    store_path: str | Path | StoreLocation,
    spec: EncoderSpec,
    batch_size: int = 64,
    wait: bool = False,
    progress: Progress | None = None,
    commit_every: int = 2048,
    cluster: Cluster | None = None,
) -> EncodeRun:
    """Embed every stored patch that has no embedding of ``spec``'s encoder yet, then sample
    the health of all of that model's embeddings."""
    encoder = build(spec, store_path, remote=cluster is not None)
    report = encode(store_path, encoder, batch_size, wait, progress, commit_every, cluster)
    health = sample_health(EmbeddingStore(store_path), report.model_id)
    return EncodeRun(report, health)
