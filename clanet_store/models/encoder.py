"""The patch encoder of SPEC section 4: a timm ViT that turns grey patches into DINO features.

The feature of a patch is DINO's linear-evaluation feature: the class token after each of the last
``n_blocks`` transformer blocks, passed through the final LayerNorm, concatenated (ViT-S/8 at
112 px: 4 x 384 = 1536; ViT-Ti/16: 4 x 192 = 768). Weights come only from one local file, in one of
three formats detected from its keys (see `backbone_state`); without a file the encoder is a seeded
random init and says so. `PatchEncoder.model_id` names the weights plus the feature definition, so
embeddings from different encoders never mix.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from clanet_store.torchfile import TorchFileError, load_torch_file

SSL_FORMAT = "clanet-ssl"
# Part of every model_id: bump it when the computation of the feature changes.
FEATURE_VERSION = 1
DEVICES = ("auto", "cpu", "cuda")
# DistributedDataParallel's and DINO's MultiCropWrapper's key prefixes, stripped in every format.
_WRAPPER_PREFIXES = ("module.", "backbone.")
# timm's classifier or DINO's projection head: never part of the feature, dropped in every format.
_HEAD_PREFIX = "head."


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the encoder; the message names it."""


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


def ssl_checkpoint(
    teacher: Mapping[str, Tensor], arch: str, img_size: int, **extra: Any
) -> dict[str, Any]:
    """The project's own SSL checkpoint, to be written with ``torch.save``.

    Format: ``{"format": "clanet-ssl", "arch": timm name, "img_size": int, "teacher": state dict
    of the DINO teacher's backbone alone (timm key names, no projection head), **extra}``. ``extra``
    holds whatever the trainer needs to resume (student, optimiser, epoch, ...); the encoder ignores
    it, and it must load with ``torch.load(weights_only=True)`` (tensors, numbers, strings and
    containers of them).
    """
    return {**extra, "format": SSL_FORMAT, "arch": arch, "img_size": img_size, "teacher": teacher}


def ssl_checkpoint_backbone(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The teacher backbone's state dict of a clanet-ssl checkpoint (`ssl_checkpoint`).

    Raises ValueError when a field of the format is missing or of the wrong type.
    """
    if ckpt.get("format") != SSL_FORMAT:
        raise ValueError(f"not a {SSL_FORMAT} checkpoint (format={ckpt.get('format')!r})")
    for field, kind in (("arch", str), ("img_size", int), ("teacher", Mapping)):
        if not isinstance(ckpt.get(field), kind):
            raise ValueError(f"{SSL_FORMAT} checkpoint without a valid {field!r} entry")
    return dict(ckpt["teacher"])


def backbone_state(ckpt: Any, arch: str) -> tuple[str, dict[str, Tensor]]:
    """Detect a checkpoint's format from its keys; return it and the backbone's state dict.

    In order: ``format == "clanet-ssl"``, the project's own SSL checkpoint (its arch must be
    ``arch``); a ``teacher`` entry, an original DINO checkpoint (the teacher is kept, the student
    ignored); a ``state_dict`` or ``model`` entry holding a mapping, a timm or DeiT training
    checkpoint; otherwise a plain timm state dict (a mapping of tensors). In every format the
    ``module.`` / ``backbone.`` key prefixes are stripped and the ``head.*`` keys dropped.
    Raises ValueError with the reason.
    """
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"unknown checkpoint format: a {type(ckpt).__name__}, not a dict")
    if "format" in ckpt:
        fmt, state = SSL_FORMAT, ssl_checkpoint_backbone(ckpt)
        if ckpt["arch"] != arch:
            raise ValueError(f"checkpoint trained as {ckpt['arch']}, the encoder is {arch}")
    elif isinstance(ckpt.get("teacher"), Mapping):
        fmt, state = "dino", ckpt["teacher"]
    elif isinstance(inner := ckpt.get("state_dict", ckpt.get("model")), Mapping):
        fmt, state = "timm", inner
    else:
        fmt, state = "timm", ckpt
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, Tensor)]
    if not state or not_tensors:
        reason = f"entries that are not tensors: {_few(not_tensors)}" if state else "no entries"
        raise ValueError(f"unknown checkpoint format ({reason})")
    stripped = {_strip_wrappers(key): value for key, value in state.items()}
    return fmt, {key: value for key, value in stripped.items() if not key.startswith(_HEAD_PREFIX)}


def load_backbone_weights(model: nn.Module, path: str | Path) -> str:
    """Load a local checkpoint file into a timm ViT (strictly); return the format detected.

    The position embedding is resampled to the model's grid with timm's helper when it was
    trained at another size (ViT-S/8: 785 tokens at 224 px -> 197 at 112 px). Raises
    CheckpointError naming the file and the reason (unreadable, unknown format, missing or
    unexpected keys, wrong shapes).
    """
    path = Path(path)
    ckpt = _read_checkpoint(path)
    try:
        fmt, state = backbone_state(ckpt, model.pretrained_cfg["architecture"])
        state = _fit_pos_embed(state, model)
        _check_state(state, model.state_dict())
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    model.load_state_dict(state)
    return fmt


class PatchEncoder(nn.Module):
    """Grey patches -> float32 features (SPEC 4), frozen, in eval mode; built by `build_encoder`.

    Run it under `inference_context`. ``weights_source`` says where the weights came from (a file
    name, or ``random-init(seed=N)``), ``weights_format`` how they were read.
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


def checkpoint_arch(path: str | Path) -> str | None:
    """The arch a clanet-ssl checkpoint was trained as; None for other formats (timm, DINO).

    Lets ``encode --weights CKPT`` build the right model without being told the arch.
    """
    ckpt = _read_checkpoint(Path(path))
    if isinstance(ckpt, Mapping) and ckpt.get("format") == SSL_FORMAT:
        return str(ckpt.get("arch"))
    return None


def select_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when torch sees a device, else CPU), ``cpu`` or ``cuda``.

    On CUDA, run the encoder under `inference_context`, which adds bf16 autocast.
    """
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def inference_context(device: torch.device) -> contextlib.ExitStack:
    """``torch.inference_mode``, plus bf16 autocast on CUDA: how the pipeline and benchmark run.

    bf16 keeps float32's exponent range, so the LayerNorm'd features need no loss scaling, and
    roughly doubles GPU throughput; the encoder still returns float32, but CUDA embeddings are not
    bit-identical to CPU float32 ones (untested here: no GPU).
    """
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if device.type == "cuda":
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    return stack


def _read_checkpoint(path: Path) -> Any:
    """torch.load on CPU with weights_only=True: a weights file cannot run code.

    argparse.Namespace is allowed: DINO and timm training checkpoints keep their ``args`` in one.
    """
    try:
        return load_torch_file(path, "a readable torch checkpoint", [argparse.Namespace])
    except TorchFileError as exc:
        raise CheckpointError(str(exc)) from None


def _strip_wrappers(key: str) -> str:
    """``module.backbone.blocks.0...`` -> ``blocks.0...``."""
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _fit_pos_embed(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Resample a position embedding from another square grid to the model's (timm's helper)."""
    pos, target = state.get("pos_embed"), model.pos_embed
    if pos is None or pos.ndim != 3 or pos.shape[1:] == target.shape[1:]:
        return state
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    side = math.isqrt(pos.shape[1] - prefix)
    if side * side != pos.shape[1] - prefix:
        raise ValueError(f"pos_embed has {pos.shape[1]} tokens: not {prefix} + a square grid")
    resampled = resample_abs_pos_embed(
        pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
    )
    return {**state, "pos_embed": resampled}


def _check_state(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """Strict loading with a readable reason: missing keys, unexpected keys, wrong shapes."""
    shared = expected.keys() & state.keys()
    problems = {
        "missing keys": sorted(expected.keys() - state.keys()),
        "unexpected keys": sorted(state.keys() - expected.keys()),
        "wrong shapes": [
            f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
            for key in sorted(shared)
            if state[key].shape != expected[key].shape
        ],
    }
    reasons = [f"{label} {_few(items)}" for label, items in problems.items() if items]
    if reasons:
        raise ValueError("; ".join(reasons))


def _few(items: list[str], most: int = 5) -> str:
    """At most ``most`` items, then how many more."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more
