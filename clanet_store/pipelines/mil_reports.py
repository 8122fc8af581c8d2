"""What the MIL pipelines return (`pipelines.mil`): frozen dataclasses whose ``as_dict()`` is the
JSON of ``train`` / ``evaluate`` / ``predict`` / ``ablation --format json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clanet_store.learn.metrics import SCALAR_SCORES
from clanet_store.pipelines.evaluate_encoder import Encoder


def encoder_fields(encoder: Encoder) -> dict[str, Any]:
    """The encoder as the MIL commands' JSON names it (``encoder_`` keys)."""
    return {
        "encoder_model_id": encoder.model_id,
        "encoder_arch": encoder.arch,
        "encoder_weights": encoder.weights,
        "encoder_random_init": encoder.random_init,
        "embedding_dim": encoder.embedding_dim,
    }


@dataclass(frozen=True)
class EncoderTraining:
    """Whether the encoder saw the split's test side (`inductive.encoder_training`)."""

    encoder_training: str
    encoder_training_why: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "encoder_training": self.encoder_training,
            "encoder_training_why": self.encoder_training_why,
        }


@dataclass(frozen=True)
class TrainReport:
    """One ``train`` run: the model file, its split, encoder and training history."""

    model: str
    split_file: str
    split_reused: bool
    split: str
    repeat: int
    train_sequences: int
    test_sequences: int
    sequences_outside_split: int
    classes: list[str]
    encoder: Encoder
    config: dict[str, Any]
    tss_candidates: list[float] | None
    tss_sigma: float | None
    tss_subsampled_share: float | None
    warnings: list[str]
    seen: EncoderTraining
    load_seconds: float
    train_seconds: float
    epochs: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split_file": self.split_file,
            "split_reused": self.split_reused,
            "split": self.split,
            "repeat": self.repeat,
            "train_sequences": self.train_sequences,
            "test_sequences": self.test_sequences,
            "sequences_outside_split": self.sequences_outside_split,
            "classes": self.classes,
            **encoder_fields(self.encoder),
            "config": self.config,
            "tss_candidates": self.tss_candidates,
            "tss_sigma": self.tss_sigma,
            "tss_subsampled_share": self.tss_subsampled_share,
            "warnings": self.warnings,
            **self.seen.as_dict(),
            "load_seconds": self.load_seconds,
            "train_seconds": self.train_seconds,
            "epochs": self.epochs,
        }


@dataclass(frozen=True)
class EvalReport:
    """A model scored on the test side of its split (`learn.metrics.evaluate`'s ``scores``)."""

    model: str
    split: str
    repeat: int
    aggregator: str
    tss: bool
    encoder: Encoder
    seen: EncoderTraining
    test_sequences: int
    test_batches: int
    classes: list[str]
    scores: dict[str, Any]
    accuracy_by_fraction: list[dict[str, float]]

    @property
    def confusion(self) -> list[list[int]]:
        """Sequences; rows true, columns predicted, both indexing ``classes``."""
        return self.scores["confusion"]

    @property
    def scalar_scores(self) -> dict[str, float]:
        """`learn.metrics.SCALAR_SCORES` by name."""
        return {key: self.scores[key] for key in SCALAR_SCORES}

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split": self.split,
            "repeat": self.repeat,
            "aggregator": self.aggregator,
            "tss": self.tss,
            **encoder_fields(self.encoder),
            **self.seen.as_dict(),
            "test_sequences": self.test_sequences,
            "test_batches": self.test_batches,
            "classes": self.classes,
            **self.scores,
            "accuracy_by_fraction": self.accuracy_by_fraction,
        }


@dataclass(frozen=True)
class AddedExport:
    """A new export ``predict`` ingested and encoded into the store first."""

    export: str
    ingest: dict[str, Any]
    encode: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"export": self.export, "ingest": self.ingest, "encode": self.encode}


@dataclass(frozen=True)
class PredictReport:
    """Predicted cell lines per sequence and per batch (rows as in `pipelines.mil.predict`)."""

    model: str
    where: list[str]
    added: AddedExport | None
    encoder: Encoder
    classes: list[str]
    threshold: float
    include_training: bool
    sequences: list[dict[str, Any]]
    batches: list[dict[str, Any]]
    in_training: int
    warnings: int
    mismatches: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "where": self.where,
            **(self.added.as_dict() if self.added is not None else {}),
            **encoder_fields(self.encoder),
            "classes": self.classes,
            "threshold": self.threshold,
            "include_training": self.include_training,
            "sequences": self.sequences,
            "batches": self.batches,
            "in_training": self.in_training,
            "warnings": self.warnings,
            "mismatches": self.mismatches,
        }


@dataclass(frozen=True)
class AblationReport:
    """Every ablation variant on both split kinds: the runs, their summary and the Markdown
    table written to ``out``."""

    out: str
    store: str
    encoder: Encoder
    protocol: str
    classes: list[str]
    sequences: int
    batches: int
    k: int
    epochs: int
    repeats: int
    test_sequences: dict[str, list[int]]
    encoder_training: list[str]
    encoders: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    markdown: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "store": self.store,
            **encoder_fields(self.encoder),
            "protocol": self.protocol,
            "classes": self.classes,
            "sequences": self.sequences,
            "batches": self.batches,
            "k": self.k,
            "epochs": self.epochs,
            "repeats": self.repeats,
            "test_sequences": self.test_sequences,
            "encoder_training": self.encoder_training,
            "encoders": self.encoders,
            "summary": self.summary,
            "runs": self.runs,
            "markdown": self.markdown,
        }
