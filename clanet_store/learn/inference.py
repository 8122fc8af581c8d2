"""MIL inference: class probabilities and bag vectors of whole sequences (or chosen images of
them) from a trained aggregator (SPEC 7)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from clanet_store.learn.aggregators import MILAggregator
from clanet_store.learn.bags import Bag, collate


def predict_proba(
    model: MILAggregator,
    bags: Sequence[Bag],
    indices_per_bag: Sequence[np.ndarray | None] | None = None,
    batch_bags: int = 32,
) -> np.ndarray:
    """Softmax (n_bags, C) on full sequences (or the images ``indices_per_bag`` selects)."""
    if not bags:
        return np.zeros((0, model.classifier.out_features))
    return _per_bag(
        model, lambda x, mask: torch.softmax(model(x, mask), dim=1), bags, indices_per_bag,
        batch_bags,
    ).astype(np.float64)  # fmt: skip


def bag_vectors(model: MILAggregator, bags: Sequence[Bag], batch_bags: int = 32) -> np.ndarray:
    """The bag vector z (n_bags, D) of each full sequence (`MILAggregator.bag_vector`), float32."""
    if not bags:
        return np.zeros((0, model.classifier.in_features), np.float32)
    return _per_bag(model, model.bag_vector, bags, None, batch_bags).astype(np.float32)


def _per_bag(
    model: MILAggregator,
    apply: Callable[[Tensor, Tensor], Tensor],
    bags: Sequence[Bag],
    indices_per_bag: Sequence[np.ndarray | None] | None,
    batch_bags: int,
) -> np.ndarray:
    """``apply(x, mask)`` of the model in eval mode, ``batch_bags`` collated bags at a time."""
    if indices_per_bag is None:
        indices_per_bag = [None] * len(bags)
    dtype = next(model.parameters()).dtype
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(bags), batch_bags):
            end = start + batch_bags
            x, mask = collate(bags[start:end], indices_per_bag[start:end], dtype)
            chunks.append(apply(x, mask).numpy())
    return np.concatenate(chunks)
