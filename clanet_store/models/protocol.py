"""``Encoder``: what ``encode``, ``search --image`` and ``predict --export`` need of an encoder.

Both the ViT (`clanet_store.models.encoder.PatchEncoder`) and the training-free classic
descriptor (`clanet_store.models.classic.ClassicEncoder`) satisfy it, so the pipelines treat them
alike.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class EncoderConfig(Protocol):
    """The part of an encoder's config the stores record: ``arch``, ``img_size``, JSON dict."""

    arch: str
    img_size: int

    def as_dict(self) -> dict[str, Any]: ...


class Encoder(Protocol):
    """Frozen map from [N, H, W] uint8 patches (a tensor on ``device``) to float32 [N, D].

    ``model_id`` names the feature definition and its parameters (weights or statistics);
    ``weights_source`` / ``weights_format`` say where they came from; ``random_init`` is True
    only for a seeded random init.
    """

    model_id: str
    embedding_dim: int
    config: EncoderConfig
    weights_source: str
    weights_format: str
    random_init: bool
    device: torch.device

    def __call__(self, patches: torch.Tensor) -> torch.Tensor: ...
