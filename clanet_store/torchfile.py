"""Read torch files safely: always ``weights_only=True``, and a one-line reason naming the file.

A file torch refuses gets our own message, never torch's: torch's suggests re-running with
``weights_only=False``, which would let a crafted file run code.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class TorchFileError(ValueError):
    """A file that is not the torch file asked for; the message names the file and the reason."""


def load_torch_file(path: str | Path, what: str, allowed: Sequence[type] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; ``what`` names the expected contents
    (e.g. "a clanet-store MIL model") in the error; ``allowed`` are extra safe classes."""
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise TorchFileError(f"{path}: empty file (0 bytes), not {what}")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TorchFileError(
            f"{path}: not {what} (it holds objects other than tensors and plain values, "
            "which are never loaded: they could run code)"
        ) from None
    except Exception as exc:  # torch.load raises many types (zip, EOF, key, runtime errors)
        kind = type(exc).__name__
        raise TorchFileError(f"{path}: not {what} (not a torch file: {kind})") from None
