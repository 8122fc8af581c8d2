"""MIL inference: class probabilities of whole sequences (or chosen images of them) from a
trained aggregator (SPEC 7)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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
    if indices_per_bag is None:
        indices_per_bag = [None] * len(bags)
    dtype = next(model.parameters()).dtype
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(bags), batch_bags):
            end = start + batch_bags
            x, mask = collate(bags[start:end], indices_per_bag[start:end], dtype)
            chunks.append(torch.softmax(model(x, mask), dim=1).numpy())
    return np.concatenate(chunks).astype(np.float64)
