"""Time-series Segment Sampling (TSS), CLANet Sec. 4.3 and Eq. 12 (SPEC 6): training only.

Each epoch, every training sequence is re-sampled as if it had been imaged at a sparser interval
``T_e``, and its loss is reweighted. The definitions this module commits to:

- ``mu_s`` (`floor_mean_gap`): floor of the sequence's mean time gap in hours,
  ``floor((t_last - t_first) / (T - 1))``; 0 for a single-image sequence (it has no gap).
- The interval prior (`TSSPrior`, a method parameter recorded in the model file). ``reference``
  (the default): the reference code's candidates 1..8 h and sigma 2.29 (the std of 1..8).
  ``fitted`` (`fit_interval_prior`): the distinct ``mu_s`` of the training sequences that have at
  least two images (the intervals actually observed), and the population std of those sequences'
  ``mu_s``. Fitted can switch TSS off without a word: when every training sequence has the same
  gap (a batch-separated split trains on one batch per line) the only candidate is ``mu_s`` and
  sigma is 0, so ``T_e = mu_s`` and nothing is ever subsampled; with a 2 h / 4 h mix the 4 h
  sequences never are. `never_subsampled` names the sequences no candidate lies above, and
  training reports the share of bag-epochs actually subsampled.
- Restriction (`draw_intervals`): ``T_e ~ N(mu_s, sigma^2)`` conditioned on the candidate set:
  ``P(T_e = c) ∝ exp(-(c - mu_s)^2 / (2 sigma^2))`` over the candidates c (the reference's
  discretised normal). With sigma 0 the draw is the candidate nearest ``mu_s`` (ties: the smaller).
- Segmenting (`window_ids`): consecutive non-overlapping windows ``[t_0 + j T_e, t_0 + (j+1) T_e)``
  anchored at the first image; only non-empty windows count.
- Snippet (`sample_snippets`): from each non-empty window of n images, a uniform random number
  1..n of its images, chosen uniformly without replacement; snippets are concatenated in time
  order. Every window keeps at least one image (the reference may drop a window's only image).
- Weight (`tss_weight`, Eq. 12): ``W = a1 * V/N + a2 * clip((g - mu_s) / (T_e - mu_s), 0, 1)`` with
  V the number of sampled images, N the number of images of the full sequence (the reference's
  ``sampled_img_num / original_img_num``), g the mean gap of the sampled images,
  ``(t_last - t_first) / (V - 1)``. The 0/0 case, a single sampled image (no gap): the second term
  is 0 (no sparser interval was simulated), so ``W = a1 / N``; the reference yields NaN there.
- ``T_e <= mu_s``: the full sequence with ``W = 1``.

Where the reference code differs, and why: docs/method.md, "Time-series Segment Sampling".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The reference code's candidate intervals (hours) and their std (SPEC 6).
REFERENCE_CANDIDATES = tuple(range(1, 9))
REFERENCE_SIGMA = float(np.std(REFERENCE_CANDIDATES))


TSS_PRIOR_KINDS = ("reference", "fitted")


@dataclass(frozen=True)
class IntervalPrior:
    """The discrete support of ``T_e`` (integer hours, ascending) and the normal's sigma."""

    candidates: tuple[int, ...]
    sigma: float


@dataclass(frozen=True)
class TSSPrior:
    """How the prior of ``T_e`` is chosen (SPEC 6; the paper/reference choice is ``reference``).

    kind: ``reference`` (candidates 1..8 h, sigma 2.29) or ``fitted`` (from the training
    sequences' gaps); candidates, sigma: explicit values that replace the kind's (None: the
    kind's own).
    """

    kind: str = "reference"
    candidates: tuple[int, ...] | None = None
    sigma: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in TSS_PRIOR_KINDS:
            raise ValueError(f"unknown TSS prior {self.kind!r}; choose one of {TSS_PRIOR_KINDS}")
        if self.candidates is not None:
            object.__setattr__(self, "candidates", tuple(int(c) for c in self.candidates))
        if self.sigma is not None:
            object.__setattr__(self, "sigma", float(self.sigma))

    def interval_prior(self, times_per_sequence: Sequence[np.ndarray]) -> IntervalPrior:
        """The prior for these training sequences (their time stamps, hours)."""
        if self.kind == "reference":
            candidates = REFERENCE_CANDIDATES if self.candidates is None else self.candidates
            sigma = REFERENCE_SIGMA if self.sigma is None else self.sigma
            return fit_interval_prior(times_per_sequence, candidates, sigma)
        return fit_interval_prior(times_per_sequence, self.candidates, self.sigma)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the model file's and ``train --format json``'s)."""
        return {
            "kind": self.kind,
            "candidates": None if self.candidates is None else list(self.candidates),
            "sigma": self.sigma,
        }

    @classmethod
    def parse(cls, value: TSSPrior | str | Mapping[str, Any]) -> TSSPrior:
        """A prior from itself, its kind's name or its dict (a pipeline TOML, a model file)."""
        if isinstance(value, TSSPrior):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        return cls(**value)


def never_subsampled(mus: np.ndarray, prior: IntervalPrior) -> np.ndarray:
    """Which sequences (by ``mu_s``) no candidate interval lies above: TSS never samples them."""
    return np.asarray(mus) >= max(prior.candidates)


def floor_mean_gap(times: np.ndarray) -> int:
    """``mu_s``: floor of the mean gap (hours) between consecutive images; 0 for a single image."""
    if len(times) < 2:
        return 0
    return int(np.floor((times[-1] - times[0]) / (len(times) - 1)))


def fit_interval_prior(
    times_per_sequence: Sequence[np.ndarray],
    candidates: Sequence[int] | None = None,
    sigma: float | None = None,
) -> IntervalPrior:
    """The prior of ``T_e`` from the training sequences' time stamps (see the module docstring).

    ``candidates`` / ``sigma`` override the observed values (reference: `REFERENCE_CANDIDATES`,
    `REFERENCE_SIGMA`). Sequences of a single image take no part in the fit.
    """
    mus = [floor_mean_gap(t) for t in times_per_sequence if len(t) >= 2]
    if (candidates is None or sigma is None) and not mus:
        raise ValueError("TSS needs at least one training sequence of two or more images")
    chosen = sorted(set(mus) if candidates is None else set(candidates))
    if not chosen:
        raise ValueError("TSS needs at least one candidate interval")
    spread = float(np.std(mus)) if sigma is None else float(sigma)
    if spread < 0:
        raise ValueError(f"sigma must be >= 0, got {spread}")
    return IntervalPrior(candidates=tuple(int(c) for c in chosen), sigma=spread)


def draw_intervals(mus: np.ndarray, prior: IntervalPrior, rng: np.random.Generator) -> np.ndarray:
    """One ``T_e`` per sequence: the normal N(mu_s, sigma^2) restricted to the candidates."""
    candidates = np.asarray(prior.candidates, dtype=np.int64)
    distance = candidates[None, :] - np.asarray(mus, dtype=np.float64)[:, None]
    if prior.sigma == 0:
        return candidates[np.argmin(np.abs(distance), axis=1)]
    log_p = -0.5 * (distance / prior.sigma) ** 2
    p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    u = rng.random(len(distance)) * cdf[:, -1]
    return candidates[np.minimum((cdf <= u[:, None]).sum(axis=1), len(candidates) - 1)]


def window_ids(times: np.ndarray, t_e: float) -> np.ndarray:
    """The window of each image: ``floor((t - t_0) / T_e)``, windows of ``T_e`` hours from t_0."""
    return np.floor((times - times[0]) / t_e).astype(np.int64)


def sample_snippets(windows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices (ascending) of one snippet per window: 1..n random images of a window of n."""
    _, starts, counts = np.unique(windows, return_index=True, return_counts=True)
    sizes = rng.integers(1, counts + 1)
    order = np.lexsort((rng.random(len(windows)), windows))
    rank = np.empty(len(windows), dtype=np.int64)
    rank[order] = np.arange(len(windows)) - np.repeat(starts, counts)
    return np.flatnonzero(rank < np.repeat(sizes, counts))


def tss_weight(
    sampled_times: np.ndarray,
    n_images: int,
    mu: int,
    t_e: int,
    alpha1: float = 1.0,
    alpha2: float = 1.0,
) -> float:
    """Eq. 12 for a sample drawn with ``T_e > mu_s`` (V/N plus the clipped sparsity term)."""
    n_sampled = len(sampled_times)
    sparsity = 0.0
    if n_sampled >= 2:
        mean_gap = (sampled_times[-1] - sampled_times[0]) / (n_sampled - 1)
        sparsity = float(np.clip((mean_gap - mu) / (t_e - mu), 0.0, 1.0))
    return alpha1 * n_sampled / n_images + alpha2 * sparsity


def tss_sample(
    times: np.ndarray,
    mu: int,
    t_e: int,
    rng: np.random.Generator,
    alpha1: float = 1.0,
    alpha2: float = 1.0,
) -> tuple[np.ndarray | None, float]:
    """One epoch's sample of a sequence: the image indices (None = all) and the Eq. 12 weight."""
    if t_e <= mu:
        return None, 1.0
    indices = sample_snippets(window_ids(times, t_e), rng)
    return indices, tss_weight(times[indices], len(times), mu, t_e, alpha1, alpha2)
