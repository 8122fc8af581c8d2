"""Scores of a trained model (SPEC 7, paper Sec. 5.1 and Fig. 8): pure NumPy.

Sequence level scores each sequence's softmax; batch level averages the softmax of a batch's
sequences and scores the batch once. Macro F1 follows scikit-learn's ``average="macro"``: the mean
F1 over the classes that occur among the true or the predicted labels. Mean +- std over repeats
uses the population std (NumPy's default, 0 for a single repeat).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from clanet_store.learn.bags import Bag

FIG8_FRACTIONS = (0.01, 0.25, 0.5, 0.75, 1.0)
SCALAR_SCORES = ("sequence_accuracy", "sequence_f1", "batch_accuracy", "batch_f1")


def top1_accuracy(labels: np.ndarray, proba: np.ndarray) -> float:
    """Share of rows whose highest probability is on the true label."""
    return float(np.mean(np.argmax(proba, axis=1) == labels))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` or ``predicted`` of 2 TP / (2 TP + FP + FN)."""
    present = np.union1d(labels, predicted)
    counts = confusion_matrix(labels, predicted, int(present.max()) + 1)[np.ix_(present, present)]
    tp = np.diag(counts)
    return float(np.mean(2 * tp / (counts.sum(axis=0) + counts.sum(axis=1))))


def batch_proba(
    proba: np.ndarray, labels: np.ndarray, batches: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per batch (sorted keys): the mean softmax of its sequences and its label.

    Raises ValueError when a batch's sequences carry different labels.
    """
    batch_array = np.asarray(batches)
    keys = sorted(set(batches))
    means, batch_labels = [], []
    for key in keys:
        rows = batch_array == key
        if len(np.unique(labels[rows])) != 1:
            raise ValueError(f"batch {key!r} holds sequences of several labels")
        means.append(proba[rows].mean(axis=0))
        batch_labels.append(labels[rows][0])
    return keys, np.array(means), np.array(batch_labels)


def evaluate(proba: np.ndarray, labels: np.ndarray, batches: Sequence[str]) -> dict[str, Any]:
    """Top-1 accuracy and macro F1 at sequence and batch level, and both confusion matrices.

    ``proba``: (n_sequences, C) softmax; ``labels``: (n_sequences,) class indices; ``batches``:
    each sequence's batch key. Keys: `SCALAR_SCORES`, ``confusion`` (sequences) and
    ``batch_confusion``, the matrices as nested lists.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no sequences to evaluate")
    _, b_proba, b_labels = batch_proba(proba, labels, batches)
    n_classes = proba.shape[1]
    predicted, b_predicted = np.argmax(proba, axis=1), np.argmax(b_proba, axis=1)
    return {
        "sequence_accuracy": top1_accuracy(labels, proba),
        "sequence_f1": macro_f1(labels, predicted),
        "batch_accuracy": top1_accuracy(b_labels, b_proba),
        "batch_f1": macro_f1(b_labels, b_predicted),
        "confusion": confusion_matrix(labels, predicted, n_classes).tolist(),
        "batch_confusion": confusion_matrix(b_labels, b_predicted, n_classes).tolist(),
    }


def mean_std(
    results: Sequence[Mapping[str, Any]], keys: Sequence[str] = SCALAR_SCORES
) -> dict[str, tuple[float, float]]:
    """Mean and population std of each score over repeats: ``{key: (mean, std)}``."""
    return {
        key: (float(np.mean([r[key] for r in results])), float(np.std([r[key] for r in results])))
        for key in keys
    }


def fraction_indices(n_images: int, fraction: float, reverse: bool = False) -> np.ndarray:
    """The images kept when a sequence is cut to ``fraction`` of its length (paper Fig. 8).

    The first ``ceil(fraction * T)`` images (at least one) in time order, or with ``reverse`` the
    last ones (the sequence read backwards from its end).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_kept = max(1, math.ceil(fraction * n_images))
    return np.arange(n_images - n_kept, n_images) if reverse else np.arange(n_kept)


def accuracy_by_fraction(
    predict: Callable[[list[np.ndarray]], np.ndarray],
    bags: Sequence[Bag],
    fractions: Sequence[float] = FIG8_FRACTIONS,
) -> dict[str, dict[float, float]]:
    """Sequence-level top-1 accuracy against the fraction of each sequence used (paper Fig. 8).

    ``predict(indices_per_bag)`` returns the softmax (n_bags, C) of ``bags`` restricted to those
    images (e.g. ``lambda idx: inference.predict_proba(model, bags, idx)``). Returns
    ``{"natural": {fraction: accuracy}, "reversed": {...}}``.
    """
    labels = np.array([bag.label for bag in bags])
    curves: dict[str, dict[float, float]] = {}
    for name, reverse in (("natural", False), ("reversed", True)):
        curves[name] = {
            fraction: top1_accuracy(
                labels, predict([fraction_indices(len(b.times), fraction, reverse) for b in bags])
            )
            for fraction in fractions
        }
    return curves
