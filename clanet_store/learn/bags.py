"""The MIL bag (one sequence of patch embeddings, SPEC 1 and 6) and its padded batch form."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Bag:
    """One sequence: the K patch embeddings of each of its T images, in time order.

    key: sequence id; label: class index (cell line); batch: batch key (``cell_line/batch``);
    position: flask position (well/location[/crop]) within the batch; times: (T,) float64 hours,
    ascending; embeddings: (T, K, D) float32; mask: (T, K) bool, False in the slots of an image
    that has fewer than K patches (whatever values those slots hold are ignored). Compared by
    identity (the arrays make field equality meaningless).
    """

    key: str
    label: int
    batch: str
    position: str
    times: np.ndarray
    embeddings: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        n_images, k = self.mask.shape
        if self.embeddings.shape[:2] != (n_images, k) or self.times.shape != (n_images,):
            raise ValueError(
                f"bag {self.key}: times {self.times.shape}, embeddings {self.embeddings.shape} "
                f"and mask {self.mask.shape} disagree"
            )
        if n_images == 0 or not self.mask.any():
            raise ValueError(f"bag {self.key}: no patch")
        if np.any(np.diff(self.times) < 0):
            raise ValueError(f"bag {self.key}: times are not sorted")

    @property
    def well(self) -> str:
        """The well of the position (its part before the first ``/``): the unit of a split."""
        return well_of(self.position)


def well_of(position: str) -> str:
    """The well of a position key ``well/location[/crop]`` (SPEC 1)."""
    return position.split("/", 1)[0]


def collate(
    bags: Sequence[Bag],
    indices_per_bag: Sequence[np.ndarray | None] | None = None,
    dtype: torch.dtype = torch.float32,
    out: np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """Pad bags into one batch: ``x[B, N, D]`` and ``mask[B, N]``, N = the largest bag.

    ``indices_per_bag[b]`` selects the images (time indices, ascending) of bag b that take part (a
    TSS sample, a part of the sequence); None takes them all. The instances of a bag are its
    selected images' K slots in time order, image by image; padding and missing patches are zero
    with mask False. A selection that holds no patch (images whose patches a filter removed) is
    replaced by the bag's image with a patch nearest in time to it (`with_patch`): a bag with no
    valid instance has no attention to normalise. ``dtype``: x's (float64 in
    tests). ``out``: a flat scratch array of the bags' dtype and at least `padded_size` elements
    that x is written into (and shares memory with when ``dtype`` matches): training reuses one,
    because a fresh array of a 32-bag batch (~80 MB) is page-faulted in on every step.
    """
    indices_per_bag = _with_patches(bags, indices_per_bag)
    pairs = list(zip(bags, indices_per_bag, strict=True))
    n_images = _n_images(bags, indices_per_bag)
    k, dim = bags[0].embeddings.shape[1:]
    shape = (len(bags), max(n_images) * k, dim)
    if out is None:
        out = np.empty(math.prod(shape), dtype=bags[0].embeddings.dtype)
    x = out[: math.prod(shape)].reshape(shape)
    mask = np.zeros(x.shape[:2], dtype=bool)
    for b, (bag, index) in enumerate(pairs):
        n = n_images[b] * k
        x[b, n:] = 0
        images = x[b, :n].reshape(n_images[b], k, dim)
        if index is None:
            images[...] = bag.embeddings
            mask[b, :n] = bag.mask.reshape(n)
        else:  # straight into the batch, without a copy of the selected images in between
            np.take(bag.embeddings, index, axis=0, out=images)
            mask[b, :n] = bag.mask[index].reshape(n)
        valid = mask[b, :n]
        if not valid.all():
            x[b, :n][~valid] = 0  # whatever the bag holds in its missing slots
    return torch.from_numpy(x).to(dtype), torch.from_numpy(mask)


def padded_size(bags: Sequence[Bag], indices_per_bag: Sequence[np.ndarray | None]) -> int:
    """The number of elements of `collate`'s x for these bags and image selections."""
    k, dim = bags[0].embeddings.shape[1:]
    return len(bags) * max(_n_images(bags, _with_patches(bags, indices_per_bag))) * k * dim


def with_patch(bag: Bag, index: np.ndarray) -> np.ndarray:
    """``index`` if its images hold a patch, else the bag's image with a patch nearest in time to
    the selection's first image (to the bag's first image for an empty selection)."""
    if len(index) and bag.mask[index].any():
        return index
    holding = np.flatnonzero(bag.mask.any(axis=1))
    anchor = bag.times[index[0]] if len(index) else bag.times[0]
    return holding[np.argmin(np.abs(bag.times[holding] - anchor))][None]


def _with_patches(
    bags: Sequence[Bag], indices_per_bag: Sequence[np.ndarray | None] | None
) -> list[np.ndarray | None]:
    if indices_per_bag is None:
        return [None] * len(bags)
    return [
        None if index is None else with_patch(bag, index)
        for bag, index in zip(bags, indices_per_bag, strict=True)
    ]


def _n_images(bags: Sequence[Bag], indices_per_bag: Sequence[np.ndarray | None]) -> list[int]:
    """How many images of each bag take part (all of them where the selection is None)."""
    return [
        len(bag.times) if index is None else len(index)
        for bag, index in zip(bags, indices_per_bag, strict=True)
    ]
