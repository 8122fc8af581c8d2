"""Split files: one JSON file per (kind, repeat) next to the models, written once and reused by
every run of that repeat (`learn.splits` draws the splits; this module reads and writes them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clanet_store.errors import ClanetError
from clanet_store.learn.splits import Split, make_split

SPLIT_SEED = 0


def split_path(directory: Path, kind: str, repeat: int) -> Path:
    """Where repeat ``repeat`` of split ``kind`` lives in ``directory``."""
    return directory / f"split-{kind}-r{repeat}.json"


def write_split(path: str | Path, split: Split) -> None:
    """Write a split as JSON (so every run of a repeat reuses the same keys)."""
    Path(path).write_text(json.dumps(split.as_dict(), indent=1) + "\n")


def read_split(path: str | Path) -> Split:
    """Read a split written by `write_split`; raises ValueError naming the file if it is not one."""
    try:
        return Split.from_dict(json.loads(Path(path).read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a valid split file ({error})") from error


def load_split(path: str | Path) -> Split:
    """`read_split` with a one-line error naming the file when it cannot be read."""
    try:
        return read_split(path)
    except ValueError as error:
        raise ClanetError(str(error)) from None


def split_for(
    sequences: Sequence[Any], kind: str, repeat: int, directory: Path
) -> tuple[Split, Path, bool]:
    """The split file's split if it exists (reused: True), else a new one written there."""
    path = split_path(directory, kind, repeat)
    if not path.exists():
        split = make_split(sequences, kind, repeat, SPLIT_SEED)
        directory.mkdir(parents=True, exist_ok=True)
        write_split(path, split)
        return split, path, False
    split = load_split(path)
    if (split.kind, split.repeat) != (kind, repeat):
        raise ClanetError(f"{path}: holds {split.kind} repeat {split.repeat}, not {kind} {repeat}")
    return split, path, True
