"""Train/test splits of sequences across batches (SPEC 7, paper Sec. 5.1); their files are
`pipelines.split_files`.

- batch-separated: for each cell line one random batch trains and all its other batches test. A
  cell line with a single batch has that batch in train and nothing in test: the model still learns
  the line (test sequences of other lines can be mistaken for it) but it is not scored on it.
- batch-stratified: within every batch the distinct wells are shuffled and the first ceil(n / 2)
  train, the rest test (a batch with one well trains only). The unit is the well (SPEC 1: a flask
  position; the reference's split files list wells), never ``well/location/crop``: the locations
  of one well and the quarter crops of one frame are neighbouring pieces of the same culture at
  the same times, so no well is ever on both sides.

Groups are visited in sorted order before any random draw, so a split depends only on the set of
sequences and the seed. Keys, batches and positions are compared as whole strings, never as
substrings (the reference's position ``B1`` also selected ``B10``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

SPLIT_KINDS = ("batch-separated", "batch-stratified")
SPLIT_FORMAT = "clanet-split"


class SequenceInfo(Protocol):
    """What a split needs to know of a sequence (`bags.Bag` has it)."""

    @property
    def key(self) -> str: ...
    @property
    def label(self) -> int: ...
    @property
    def batch(self) -> str: ...
    @property
    def position(self) -> str: ...
    @property
    def well(self) -> str: ...


S = TypeVar("S", bound=SequenceInfo)


@dataclass(frozen=True)
class Split:
    """One repeat of one split kind: the sequence keys (sorted) on each side."""

    kind: str
    repeat: int
    seed: int
    train: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"unknown split kind {self.kind!r}; choose one of {SPLIT_KINDS}")
        for side, keys in (("train", self.train), ("test", self.test)):
            if len(set(keys)) != len(keys):
                raise ValueError(f"split {self.kind} repeat {self.repeat}: repeated {side} keys")
        both = set(self.train) & set(self.test)
        if both:
            raise ValueError(f"split {self.kind} repeat {self.repeat}: {len(both)} keys in both")

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (also what a model file records)."""
        return {
            "format": SPLIT_FORMAT,
            "kind": self.kind,
            "repeat": self.repeat,
            "seed": self.seed,
            "train": list(self.train),
            "test": list(self.test),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        """The inverse of `as_dict`; raises ValueError on another format or a bad split."""
        if data.get("format") != SPLIT_FORMAT:
            raise ValueError(f"not a {SPLIT_FORMAT} record")
        return cls(
            kind=data["kind"],
            repeat=int(data["repeat"]),
            seed=int(data["seed"]),
            train=tuple(data["train"]),
            test=tuple(data["test"]),
        )


def _groups(items: Iterable[S], key: str) -> dict[Any, list[S]]:
    groups: dict[Any, list[S]] = defaultdict(list)
    for item in items:
        groups[getattr(item, key)].append(item)
    return groups


def _batch_separated(sequences: Sequence[SequenceInfo], rng: np.random.Generator) -> set[str]:
    """Train keys: all sequences of one random batch per cell line."""
    train: set[str] = set()
    for _, of_line in sorted(_groups(sequences, "label").items()):
        batches = sorted(_groups(of_line, "batch").items())
        _, chosen = batches[rng.integers(len(batches))]
        train.update(seq.key for seq in chosen)
    return train


def _batch_stratified(sequences: Sequence[SequenceInfo], rng: np.random.Generator) -> set[str]:
    """Train keys: the sequences of a random ceil(n/2) of the wells of every batch."""
    train: set[str] = set()
    for _, of_batch in sorted(_groups(sequences, "batch").items()):
        wells = sorted(_groups(of_batch, "well").items())
        order = rng.permutation(len(wells))[: math.ceil(len(wells) / 2)]
        for i in order:
            train.update(seq.key for seq in wells[i][1])
    return train


def make_split(sequences: Sequence[SequenceInfo], kind: str, repeat: int, seed: int = 0) -> Split:
    """Repeat ``repeat`` (1, 2, 3, ...) of split ``kind``, drawn from ``(seed, repeat)``.

    Raises ValueError on repeated keys or a batch key shared by two cell lines.
    """
    keys = [seq.key for seq in sequences]
    if len(set(keys)) != len(keys):
        raise ValueError("repeated sequence keys")
    for batch, of_batch in _groups(sequences, "batch").items():
        if len({seq.label for seq in of_batch}) > 1:
            raise ValueError(f"batch {batch!r} holds sequences of several cell lines")
    rng = np.random.default_rng([seed, repeat])
    if kind == "batch-separated":
        train = _batch_separated(sequences, rng)
    elif kind == "batch-stratified":
        train = _batch_stratified(sequences, rng)
    else:
        raise ValueError(f"unknown split kind {kind!r}; choose one of {SPLIT_KINDS}")
    test = set(keys) - train
    return Split(kind, repeat, seed, tuple(sorted(train)), tuple(sorted(test)))


def make_splits(
    sequences: Sequence[SequenceInfo], kind: str, repeats: int = 3, seed: int = 0
) -> list[Split]:
    """The paper's three random repeats (numbered from 1) of one split kind."""
    return [make_split(sequences, kind, repeat, seed) for repeat in range(1, repeats + 1)]


def apply_split(sequences: Sequence[S], split: Split) -> tuple[list[S], list[S]]:
    """The train and test sequences of a split, by exact key; others are left out.

    Raises ValueError when a key of the split is not among ``sequences`` (a stale split).
    """
    by_key = {seq.key: seq for seq in sequences}
    missing = [key for key in (*split.train, *split.test) if key not in by_key]
    if missing:
        raise ValueError(f"{len(missing)} split keys are not in the data, e.g. {missing[0]!r}")
    return [by_key[key] for key in split.train], [by_key[key] for key in split.test]
