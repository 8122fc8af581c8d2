"""Where the encoder runs: device choice and the inference context (bf16 autocast on CUDA)."""

from __future__ import annotations

import contextlib

import torch

DEVICES = ("auto", "cpu", "cuda")


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
