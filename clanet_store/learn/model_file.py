"""MIL model files: the weights with the config, classes, split, encoder model_id and what
training recorded, read back with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clanet_store.learn.aggregators import MILAggregator, build_aggregator
from clanet_store.learn.splits import Split
from clanet_store.learn.training import MILConfig
from clanet_store.torchfile import load_torch_file

MODEL_FORMAT = "clanet-mil"
MODEL_VERSION = 1


@dataclasses.dataclass(frozen=True)
class MILModel:
    """A loaded model file: the module (in eval mode) and what it was trained with."""

    model: MILAggregator
    config: MILConfig
    classes: tuple[str, ...]
    split: Split | None
    encoder_model_id: str
    training: dict[str, Any] = dataclasses.field(default_factory=dict)


def save_model(
    path: str | Path,
    model: MILAggregator,
    config: MILConfig,
    classes: Sequence[str],
    split: Split | None,
    encoder_model_id: str,
    training: dict[str, Any] | None = None,
) -> None:
    """Write a model file: weights, config, class list, split, the encoder's model_id and what
    training recorded (`training_record` of `train_mil`'s history: the TSS prior used and the share
    of bag-epochs it subsampled, the warnings).

    Loads with ``torch.load(weights_only=True)``; the embeddings a model is applied to must come
    from the encoder ``encoder_model_id`` (the caller checks that against the store).
    """
    torch.save(
        {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "config": config.as_dict(),
            "classes": list(classes),
            "dim": model.classifier.in_features,
            "split": None if split is None else split.as_dict(),
            "encoder_model_id": encoder_model_id,
            "training": training or {},
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_model(path: str | Path) -> MILModel:
    """Read a file written by `save_model`; raises ValueError naming the file if it is not one."""
    data = load_torch_file(path, f"a {MODEL_FORMAT} v{MODEL_VERSION} model file")
    try:
        if not isinstance(data, dict) or (data.get("format"), data.get("version")) != (
            MODEL_FORMAT,
            MODEL_VERSION,
        ):
            raise ValueError(f"not a {MODEL_FORMAT} v{MODEL_VERSION} model file")
        config = MILConfig.from_dict(data["config"])
        model = build_aggregator(config.aggregator, data["dim"], len(data["classes"]))
        model.load_state_dict(data["state_dict"])
        split = None if data["split"] is None else Split.from_dict(data["split"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: cannot load the MIL model ({error})") from error
    return MILModel(
        model.eval(),
        config,
        tuple(data["classes"]),
        split,
        data["encoder_model_id"],
        data.get("training") or {},
    )


TRAINING_RECORD = ("tss_candidates", "tss_sigma", "tss_subsampled_share", "warnings")


def training_record(history: dict[str, Any]) -> dict[str, Any]:
    """What a model file keeps of `train_mil`'s history (everything but the epochs)."""
    return {key: history[key] for key in TRAINING_RECORD}
