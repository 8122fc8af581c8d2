"""The patch encoder of SPEC section 4: a timm ViT that turns grey patches into DINO features.

The feature of a patch is DINO's linear-evaluation feature: the class token after each of the last
``n_blocks`` transformer blocks, passed through the final LayerNorm, concatenated (ViT-S/8 at
112 px: 4 x 384 = 1536; ViT-Ti/16: 4 x 192 = 768). Weights come only from one local file (formats:
`clanet_store.models.checkpoint`); without a file the encoder is a seeded random init and says
so. `PatchEncoder.model_id` names the weights plus the feature definition, so
embeddings from different encoders never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from clanet_store.models.checkpoint import load_backbone_weights

# Part of every model_id: bump it when the computation of the feature changes.
FEATURE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The feature definition (SPEC 4); every field is part of the model_id.

    arch: a timm ViT with a class token; img_size: patch side in pixels (the position embedding is
    built for it); n_blocks: how many last blocks contribute their class token; normalize: ImageNet
    mean/std after scaling to [0, 1] (off by default, like the reference code).
    """

    arch: str = "vit_small_patch8_224"
    img_size: int = 112
    n_blocks: int = 4
    normalize: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (for the model_id and for the stores' metadata)."""
        return dataclasses.asdict(self)


class PatchEncoder(nn.Module):
    """Grey patches -> float32 features (SPEC 4), frozen, in eval mode; built by `build_encoder`.

    Run it under `clanet_store.models.device.inference_context`. ``weights_source`` says where the
    weights came from (a file name, or ``random-init(seed=N)``), ``weights_format`` how they were
    read.
    """

    def __init__(
        self, backbone: nn.Module, config: EncoderConfig, weights_source: str, weights_format: str
    ) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.config = config
        self.weights_source = weights_source
        self.weights_format = weights_format
        for name, value in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)):
            self.register_buffer(name, torch.tensor(value).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @property
    def random_init(self) -> bool:
        """True without a weights file: the features are then reproducible but meaningless."""
        return self.weights_format == "random-init"

    @property
    def embedding_dim(self) -> int:
        """Width of the feature: n_blocks x the ViT's width."""
        return self.config.n_blocks * self.backbone.embed_dim

    @property
    def device(self) -> torch.device:
        """Where the weights live; `forward` moves its input there."""
        return self.backbone.cls_token.device

    @cached_property
    def model_id(self) -> str:
        """16 hex digits of SHA-256 over the feature definition and the weights.

        The config dict and FEATURE_VERSION as sorted JSON, then for every backbone tensor in
        sorted key order its name, dtype, shape and bytes. Computed once (the encoder is frozen).
        The same weights read from different formats give the same id.
        """
        definition = {**self.config.as_dict(), "feature_version": FEATURE_VERSION}
        digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode())
        state = self.backbone.state_dict()
        for key in sorted(state):
            tensor = state[key].detach().cpu().contiguous()
            digest.update(f"\n{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()[:16]

    def forward(self, patches: Tensor) -> Tensor:
        """[N, H, W] grey patches, uint8 or float already in [0, 1] -> [N, embedding_dim] float32.

        The patch is repeated to 3 channels (uint8 scaled by 1/255), optionally normalised, and
        the final-LayerNorm'd class tokens of the last n_blocks blocks are concatenated in block
        order, as timm's ``forward_intermediates(..., return_prefix_tokens=True, norm=True)``.
        """
        side = self.config.img_size
        if patches.ndim != 3 or tuple(patches.shape[1:]) != (side, side):
            raise ValueError(f"expected patches [N, {side}, {side}], got {tuple(patches.shape)}")
        if patches.dtype != torch.uint8 and not patches.is_floating_point():
            raise ValueError(f"expected uint8 or float patches, got {patches.dtype}")
        x = patches.to(self.device, non_blocking=True)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = x.unsqueeze(1).expand(-1, 3, -1, -1)
        if self.config.normalize:
            x = (x - self.mean) / self.std
        layers = self.backbone.forward_intermediates(
            x,
            indices=self.config.n_blocks,
            return_prefix_tokens=True,
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return torch.cat([prefix[:, 0] for _tokens, prefix in layers], dim=1).float()


def build_encoder(
    config: EncoderConfig, weights: str | Path | None = None, seed: int = 0
) -> PatchEncoder:
    """The encoder for ``config``, with weights from a local file or a seeded random init.

    Nothing is ever downloaded. The random init is drawn from a forked RNG seeded with ``seed``
    (the global RNG is left as it was), so it is identical for identical seeds. Raises ValueError
    for an arch without a class token or an impossible n_blocks, CheckpointError for a bad file.
    """
    if not timm.is_model(config.arch):
        raise ValueError(f"unknown timm architecture {config.arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = timm.create_model(
            config.arch, pretrained=False, img_size=config.img_size, num_classes=0
        )
    if getattr(backbone, "cls_token", None) is None:
        raise ValueError(f"{config.arch} has no class token: the feature needs one")
    if not 1 <= config.n_blocks <= len(backbone.blocks):
        raise ValueError(
            f"n_blocks={config.n_blocks}, but {config.arch} has {len(backbone.blocks)}"
        )
    if weights is None:
        return PatchEncoder(backbone, config, f"random-init(seed={seed})", "random-init")
    fmt = load_backbone_weights(backbone, weights)
    return PatchEncoder(backbone, config, Path(weights).name, fmt)
