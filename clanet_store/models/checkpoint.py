"""Weights files of the patch encoder: format detection, key mapping, ``pos_embed`` resampling.

Three formats are read, detected from their keys (see `backbone_state`): the project's own
clanet-ssl checkpoint (`ssl_checkpoint`), an original DINO checkpoint, and a timm / DeiT state dict
or training checkpoint. Functions over state dicts; `load_backbone_weights` puts the result into a
timm ViT. Files are read with ``weights_only=True``, so a weights file cannot run code.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from clanet_store.torchfile import TorchFileError, load_torch_file

SSL_FORMAT = "clanet-ssl"
# DistributedDataParallel's and DINO's MultiCropWrapper's key prefixes, stripped in every format.
_WRAPPER_PREFIXES = ("module.", "backbone.")
# timm's classifier or DINO's projection head: never part of the feature, dropped in every format.
_HEAD_PREFIX = "head."


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the encoder; the message names it."""


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


def checkpoint_arch(path: str | Path) -> str | None:
    """The arch a clanet-ssl checkpoint was trained as; None for other formats (timm, DINO).

    Lets ``encode --weights CKPT`` build the right model without being told the arch.
    """
    ckpt = _read_checkpoint(Path(path))
    if isinstance(ckpt, Mapping) and ckpt.get("format") == SSL_FORMAT:
        return str(ckpt.get("arch"))
    return None


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
