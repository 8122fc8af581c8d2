"""Batched MIL training with TSS and Eq. 14 weighted gradient accumulation (SPEC 6); inference is
`learn.inference`, model files `learn.model_file`.

A mini-batch of ``batch_bags`` sequences is one padded forward/backward of
``loss = sum_b (W_b / sum W) * L_b`` (L_b: the bag's cross-entropy, W_b: its Eq. 12 TSS weight, 1
without TSS). Its gradient is by linearity the reference's per-bag accumulation (each bag's
gradient scaled by ``W_b / sum W``), kept here as `per_bag_backward` for the test and the
benchmark. SGD as in the reference code.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clanet_store.learn.aggregators import AGGREGATORS, MILAggregator, build_aggregator
from clanet_store.learn.bags import Bag, collate, padded_size
from clanet_store.learn.tss import (
    IntervalPrior,
    TSSPrior,
    draw_intervals,
    floor_mean_gap,
    never_subsampled,
    tss_sample,
)
from clanet_store.progress import Progress


@dataclasses.dataclass(frozen=True)
class MILConfig:
    """Everything that defines a training run (SPEC 6 defaults: the reference code's values).

    aggregator: one of `aggregators.AGGREGATORS`; tss: Time-series Segment Sampling on/off; k:
    patch slots per image the bags must have; alpha1, alpha2: the Eq. 12 coefficients;
    tss_prior: the T_e prior (`tss.TSSPrior`; also given as its kind's name or its dict, as in a
    pipeline TOML); seed: model init, shuffling and TSS.
    """

    aggregator: str = "gated"
    tss: bool = True
    k: int = 10
    epochs: int = 2000
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_bags: int = 32
    alpha1: float = 1.0
    alpha2: float = 1.0
    tss_prior: TSSPrior = dataclasses.field(default_factory=TSSPrior)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.aggregator!r}; choose one of {AGGREGATORS}")
        if self.epochs < 0 or self.batch_bags < 1 or self.k < 1:
            raise ValueError("epochs must be >= 0, batch_bags and k >= 1")
        if self.alpha1 <= 0 or self.alpha2 < 0:
            raise ValueError("alpha1 must be > 0 (every TSS weight then is too), alpha2 >= 0")
        object.__setattr__(self, "tss_prior", TSSPrior.parse(self.tss_prior))

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self) | {"tss_prior": self.tss_prior.as_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MILConfig:
        """The inverse of `as_dict`; also reads model files written before `TSSPrior`, whose
        ``tss_candidates`` / ``tss_sigma`` (None: fitted) were the prior."""
        values = dict(values)
        if "tss_candidates" in values or "tss_sigma" in values:
            candidates, sigma = values.pop("tss_candidates", None), values.pop("tss_sigma", None)
            values["tss_prior"] = TSSPrior("fitted", candidates, sigma)
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class MiniBatch:
    """The bags of one optimiser step, each with its TSS image indices (None = all) and weight."""

    bags: list[Bag]
    indices: list[np.ndarray | None]
    weights: np.ndarray


def init_model(config: MILConfig, dim: int, n_classes: int) -> MILAggregator:
    """The aggregator of ``config`` initialised from ``config.seed`` (the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_aggregator(config.aggregator, dim, n_classes)


def plan_epoch(
    bags: Sequence[Bag],
    mus: np.ndarray,
    prior: IntervalPrior | None,
    config: MILConfig,
    rng: np.random.Generator,
) -> list[MiniBatch]:
    """One epoch: the bags shuffled into mini-batches, each bag TSS-sampled (prior None: no TSS).

    ``mus``: each bag's ``mu_s`` (`tss.floor_mean_gap`), in the order of ``bags``. A sample is
    drawn from the images that hold a patch, so it never selects images without one.
    """
    order = rng.permutation(len(bags))
    if prior is None:
        samples = [(None, 1.0)] * len(bags)
    else:
        intervals = draw_intervals(mus[order], prior, rng)
        samples = [
            _sample_holding(bags[i], mus[i], t_e, rng, config)
            for i, t_e in zip(order, intervals, strict=True)
        ]
    return [
        MiniBatch(
            bags=[bags[i] for i in order[start : start + config.batch_bags]],
            indices=[index for index, _ in samples[start : start + config.batch_bags]],
            weights=np.array([w for _, w in samples[start : start + config.batch_bags]]),
        )
        for start in range(0, len(bags), config.batch_bags)
    ]


def _sample_holding(
    bag: Bag, mu: int, t_e: int, rng: np.random.Generator, config: MILConfig
) -> tuple[np.ndarray | None, float]:
    """`tss.tss_sample` over the images of ``bag`` that hold a patch, as indices into the bag."""
    holding = np.flatnonzero(bag.mask.any(axis=1))
    full = len(holding) == len(bag.times)
    times = bag.times if full else bag.times[holding]
    index, weight = tss_sample(times, mu, t_e, rng, config.alpha1, config.alpha2)
    return (index if full or index is None else holding[index]), weight


def _weighted_loss(
    model: MILAggregator,
    bags: Sequence[Bag],
    indices: Sequence[np.ndarray | None],
    shares: np.ndarray,
    scratch: np.ndarray | None,
) -> tuple[Tensor, int]:
    """``sum_b shares_b * L_b`` over one padded batch, and how many bags it classifies right."""
    x, mask = collate(bags, indices, next(model.parameters()).dtype, scratch)
    y = torch.tensor([bag.label for bag in bags])
    losses, logits = model.loss(x, mask, y)
    weighted = (torch.as_tensor(shares, dtype=losses.dtype) * losses).sum()
    return weighted, int((logits.argmax(dim=1) == y).sum())


def batched_backward(
    model: MILAggregator, batch: MiniBatch, scratch: np.ndarray | None = None
) -> tuple[float, int]:
    """Eq. 14 as one padded forward/backward; returns the loss and the number classified right.

    ``scratch``: the `collate` buffer to reuse (see `batch_scratch`).
    """
    loss, correct = _weighted_loss(
        model, batch.bags, batch.indices, batch.weights / batch.weights.sum(), scratch
    )
    loss.backward()
    return loss.item(), correct


def per_bag_backward(
    model: MILAggregator, batch: MiniBatch, scratch: np.ndarray | None = None
) -> tuple[float, int]:
    """The reference's Eq. 14: one forward/backward per bag, its loss scaled by ``W_b / sum W``.

    Only the baseline of the gradient test and of ``benchmarks/bench_mil.py``.
    """
    shares = batch.weights / batch.weights.sum()
    total, correct = 0.0, 0
    for b in range(len(batch.bags)):
        loss, right = _weighted_loss(
            model, batch.bags[b : b + 1], batch.indices[b : b + 1], shares[b : b + 1], scratch
        )
        loss.backward()
        total, correct = total + loss.item(), correct + right
    return total, correct


def train_epoch(
    model: MILAggregator,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[MiniBatch],
    backward: Callable[
        [MILAggregator, MiniBatch, np.ndarray], tuple[float, int]
    ] = batched_backward,
) -> dict[str, float]:
    """One optimiser step per mini-batch; the epoch's mean weighted loss and training accuracy."""
    model.train()
    scratch = batch_scratch(batches)
    loss_sum, correct, n_bags = 0.0, 0, 0
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss, right = backward(model, batch, scratch)
        optimizer.step()
        loss_sum += loss * len(batch.bags)
        correct += right
        n_bags += len(batch.bags)
    return {"loss": loss_sum / n_bags, "accuracy": correct / n_bags}


def batch_scratch(batches: Sequence[MiniBatch]) -> np.ndarray:
    """One `collate` buffer that fits every mini-batch of ``batches``, reused step after step."""
    size = max(padded_size(batch.bags, batch.indices) for batch in batches)
    return np.empty(size, dtype=batches[0].bags[0].embeddings.dtype)


def make_optimizer(model: MILAggregator, config: MILConfig) -> torch.optim.SGD:
    """SGD with the reference code's momentum and weight decay.

    Fused: one kernel per parameter instead of four passes (weight decay, momentum, update).
    """
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        fused=True,
    )


def train_mil(
    bags: Sequence[Bag],
    classes: Sequence[str],
    config: MILConfig,
    progress: Progress | None = None,
) -> tuple[MILAggregator, dict[str, Any]]:
    """Train a bag classifier on ``bags`` (labels index ``classes``); deterministic for a seed.

    ``progress("training", epoch, epochs, loss=, accuracy=)`` follows the epochs. Returns the model
    in eval mode and the history: ``tss_candidates``, ``tss_sigma`` (the prior used, None without
    TSS), ``tss_subsampled_share`` (the share of bag-epochs TSS actually subsampled, None without
    TSS), ``warnings`` (TSS that cannot sample) and ``epochs`` (the stats).
    """
    if not bags:
        raise ValueError("no training bags")
    dims = {bag.embeddings.shape[2] for bag in bags}
    slots = {bag.embeddings.shape[1] for bag in bags}
    if len(dims) != 1 or slots != {config.k}:
        raise ValueError(f"bags must share one D and have k={config.k} slots: D {dims}, K {slots}")
    if not all(0 <= bag.label < len(classes) for bag in bags):
        raise ValueError(f"a bag label is outside the {len(classes)} classes")
    model = init_model(config, dims.pop(), len(classes))
    optimizer = make_optimizer(model, config)
    rng = np.random.default_rng(config.seed)
    prior = config.tss_prior.interval_prior([b.times for b in bags]) if config.tss else None
    mus = np.array([floor_mean_gap(bag.times) for bag in bags])
    history: dict[str, Any] = {
        "tss_candidates": None if prior is None else list(prior.candidates),
        "tss_sigma": None if prior is None else prior.sigma,
        "tss_subsampled_share": None,
        "warnings": [] if prior is None else tss_warnings(mus, prior, config.tss_prior),
        "epochs": [],
    }
    subsampled = 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        batches = plan_epoch(bags, mus, prior, config, rng)
        subsampled += sum(index is not None for batch in batches for index in batch.indices)
        stats = train_epoch(model, optimizer, batches)
        history["epochs"].append({"epoch": epoch, **stats, "seconds": time.perf_counter() - start})
        if progress is not None:
            progress("training", epoch, config.epochs, **stats)
    if prior is not None and config.epochs:
        history["tss_subsampled_share"] = subsampled / (config.epochs * len(bags))
    return model.eval(), history


def tss_warnings(mus: np.ndarray, prior: IntervalPrior, chosen: TSSPrior) -> list[str]:
    """What keeps TSS from sampling: sequences no candidate lies above, a sigma of 0."""
    warnings = []
    never = never_subsampled(mus, prior)
    if never.any():
        warnings.append(
            f"TSS ({chosen.kind} prior, candidates {list(prior.candidates)} h): no candidate "
            f"interval lies above mu_s of {int(never.sum())} of {len(mus)} training sequences "
            f"(mu_s {sorted({int(m) for m in mus[never]})} h); they are never subsampled"
            + (" (try --tss-prior reference)" if chosen.kind == "fitted" else "")
        )
    if prior.sigma == 0:
        warnings.append(
            f"TSS ({chosen.kind} prior): sigma is 0, so T_e is always the candidate nearest "
            "mu_s; a sequence is never subsampled unless that candidate lies above its mu_s"
        )
    return warnings
