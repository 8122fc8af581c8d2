"""Drift between reference and new embeddings: unbiased MMD^2 and a group permutation test (SPEC 8).

* **Kernel**: ``k(x, y) = exp(-||x - y||^2 / (2 h^2))`` with ``h`` the median pairwise distance of
  the pooled rows (computed on a seeded sample of ``MEDIAN_SAMPLE`` rows when there are more). The
  pooled set does not change under permutation, so neither does ``h``.
* **Statistic**: the unbiased estimator ``MMD^2_u`` (Gretton et al., JMLR 2012)
  ``S_xx / (m (m-1)) + S_yy / (n (n-1)) - 2 S_xy / (m n)``, the ``i = j`` terms left out (so it
  can be slightly negative when there is no difference).
* **Groups**: the patches of one image (or sequence) are correlated, so the permutation test
  exchanges whole groups between the two sides, never single rows; the p-value is
  ``(1 + #{permuted >= observed}) / (1 + P)``.
* **Blocks**: rows are sorted by group and the pooled kernel is computed in ``block x block`` tiles
  (float32, CPU or GPU, symmetric: upper tiles only), each tile reduced at once to group sums
  ``G[a, b] = sum of k over the rows of a x the rows of b`` (float64). Every MMD, observed or
  permuted, is a quadratic form in ``G``, so ``P`` permutations cost ``O(P g^2)`` after one
  ``O(N^2 D)`` pass. Memory: a few ``block^2`` float32 tiles plus ``8 g^2`` bytes for ``g`` groups.
* **Online mode**: windows of ``window`` consecutive new images of one sequence (SPEC 8: sizes
  2-20 compared, 10 best), each tested against the whole reference on the same group sums (no
  second kernel pass); the first window with p < alpha is the detection.
* **Subsampling rule** (when reference + new rows exceed ``max_rows``, default 100,000, i.e. a
  100,000 x 100,000 kernel): the smaller side keeps at most ``max_rows // 2`` rows, the larger side
  at most ``max_rows`` minus what the smaller kept; a side over its cap keeps whole groups, taken in
  a random order seeded by ``seed`` while they fit.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clanet_store.progress import Progress

MEDIAN_SAMPLE = 2000
MAX_ROWS = 100_000
BLOCK = 4096
PERMUTATION_CHUNK = 256
TIE_TOL = 1e-10  # equal splits give equal statistics up to float64 summation-order noise


@dataclass(frozen=True)
class PooledGram:
    """Group sums of the pooled kernel; reference groups come first (``n_x`` of them)."""

    sums: np.ndarray  # (g, g) float64
    sizes: np.ndarray  # (g,) rows per group
    labels: np.ndarray  # (g,) group labels
    n_x: int
    bandwidth: float
    subsampled: bool


@dataclass(frozen=True)
class DriftResult:
    """One permutation test (``n_reference`` / ``n_new`` count rows, i.e. patches)."""

    mmd: float
    p_value: float
    n_reference: int
    n_new: int
    n_reference_groups: int
    n_new_groups: int
    n_permutations: int
    bandwidth: float
    subsampled: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def median_bandwidth(z: np.ndarray, seed: int = 0, sample: int = MEDIAN_SAMPLE) -> float:
    """Median pairwise Euclidean distance (i < j) of the rows, on a seeded sample if many.

    Falls back to 1.0 when all sampled rows are equal (the kernel is then constant and MMD^2 = 0).
    """
    if len(z) > sample:
        z = z[np.random.default_rng(seed).choice(len(z), sample, replace=False)]
    t = torch.from_numpy(np.asarray(z, np.float64))
    t = t - t.mean(0)
    sq = (t * t).sum(1)
    d2 = torch.addmm(sq[:, None] + sq[None, :], t, t.T, alpha=-2.0)  # BLAS, unlike torch.pdist
    upper = torch.triu_indices(len(t), len(t), offset=1)
    d = d2[upper[0], upper[1]].clamp(min=0.0).sqrt().numpy()
    h = float(np.median(d)) if d.size else 0.0
    return h if h > 0 else 1.0


def subsample_rows(
    x_groups: np.ndarray, y_groups: np.ndarray, max_rows: int = MAX_ROWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean row masks of the reference and new rows kept under the module's subsampling rule."""
    nx, ny = len(x_groups), len(y_groups)
    if nx + ny <= max_rows:
        return np.ones(nx, bool), np.ones(ny, bool)
    small_cap = min(min(nx, ny), max_rows // 2)
    cap_x, cap_y = (
        (small_cap, max_rows - small_cap) if nx <= ny else (max_rows - small_cap, small_cap)
    )
    rng = np.random.default_rng(seed)
    return _keep_groups(x_groups, cap_x, rng), _keep_groups(y_groups, cap_y, rng)


def _keep_groups(groups: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Whole groups in a random order while their rows fit in ``cap``."""
    if len(groups) <= cap:
        return np.ones(len(groups), bool)
    labels, codes, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(labels))
    fits = np.cumsum(sizes[order]) <= cap
    keep = np.zeros(len(labels), bool)
    keep[order[fits]] = True
    return keep[codes]


def group_kernel_sums(
    z: np.ndarray,
    codes: np.ndarray,
    bandwidth: float,
    block: int = BLOCK,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """``G[a, b]`` = sum of the RBF kernel over rows of group ``a`` x rows of group ``b``.

    ``codes`` are integer group codes ``0 .. g-1``; the ``i = j`` terms are exactly 1.
    """
    n_groups = int(codes.max()) + 1
    order = np.argsort(codes, kind="stable")
    c = torch.from_numpy(codes[order].astype(np.int64)).to(device)
    t = torch.from_numpy(np.asarray(z[order], np.float32)).to(device)
    t -= t.mean(0)  # in place (t is a copy): shift-invariant distances, less cancellation
    sq = (t * t).sum(1)
    gamma = 1.0 / (2.0 * bandwidth**2)
    sums = torch.zeros((n_groups, n_groups), dtype=torch.float64, device=device)
    starts = range(0, len(t), block)
    total, done = len(starts) * (len(starts) + 1) // 2, 0
    with torch.no_grad():
        for i in starts:
            ci = c[i : i + block]
            gi, ni = int(ci[0]), int(ci[-1] - ci[0]) + 1
            for j in starts[i // block :]:
                cj = c[j : j + block]
                gj, nj = int(cj[0]), int(cj[-1] - cj[0]) + 1
                d2 = torch.addmm(
                    sq[i : i + block, None] + sq[None, j : j + block],
                    t[i : i + block],
                    t[j : j + block].T,
                    alpha=-2.0,
                )
                d2.clamp_(min=0.0)
                if i == j:
                    d2.fill_diagonal_(0.0)
                k = torch.exp(d2.mul_(-gamma))
                cols = torch.zeros((len(ci), nj), device=device).index_add_(1, cj - gj, k)
                tile = torch.zeros((ni, nj), dtype=torch.float64, device=device)
                tile.index_add_(0, ci - gi, cols.double())
                sums[gi : gi + ni, gj : gj + nj] += tile
                if j != i:
                    sums[gj : gj + nj, gi : gi + ni] += tile.T
                done += 1
                if progress is not None:
                    progress("kernel", done, total)
    return sums.cpu().numpy()


def pooled_gram(
    x: np.ndarray,
    y: np.ndarray,
    x_groups: np.ndarray,
    y_groups: np.ndarray,
    max_rows: int = MAX_ROWS,
    seed: int = 0,
    block: int = BLOCK,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> PooledGram:
    """Subsample (module rule), choose the bandwidth, and compute the group sums of the pooled
    kernel. ``x_groups`` / ``y_groups`` label the rows' images (or sequences); a label may not
    appear on both sides."""
    x_groups, y_groups = np.asarray(x_groups), np.asarray(y_groups)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"MMD needs at least 2 rows per side (reference {len(x)}, new {len(y)})")
    keep_x, keep_y = subsample_rows(x_groups, y_groups, max_rows, seed)
    x, y, x_groups, y_groups = x[keep_x], y[keep_y], x_groups[keep_x], y_groups[keep_y]
    x_labels, x_codes = np.unique(x_groups, return_inverse=True)
    y_labels, y_codes = np.unique(y_groups, return_inverse=True)
    shared = np.intersect1d(x_labels, y_labels)
    if len(shared):
        raise ValueError(f"{len(shared)} group(s) on both sides, e.g. {shared[0]!r}")
    z = np.concatenate([x, y])
    codes = np.concatenate([x_codes, y_codes + len(x_labels)])
    bandwidth = median_bandwidth(z, seed)
    sums = group_kernel_sums(z, codes, bandwidth, block, device, progress)
    return PooledGram(
        sums=sums,
        sizes=np.bincount(codes).astype(np.float64),
        labels=np.concatenate([x_labels, y_labels]),
        n_x=len(x_labels),
        bandwidth=bandwidth,
        subsampled=not (keep_x.all() and keep_y.all()),
    )


def split_mmd(sums: np.ndarray, sizes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 of each split; ``masks`` (P, g) marks the groups on the reference side."""
    s = masks.astype(np.float64)
    row_sums = sums.sum(1)
    s_g_s = np.einsum("pg,pg->p", s @ sums, s)
    s_r = s @ row_sums
    m = s @ sizes
    n = sizes.sum() - m
    xx = s_g_s - m
    yy = row_sums.sum() - 2.0 * s_r + s_g_s - n
    xy = s_r - s_g_s
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def permutation_test(
    sums: np.ndarray, sizes: np.ndarray, n_x: int, n_permutations: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(MMD^2, p-value) of the split "first ``n_x`` groups = reference"; permutations draw which
    ``n_x`` groups form the reference side (seeded)."""
    g = len(sizes)
    observed = np.zeros((1, g), bool)
    observed[0, :n_x] = True
    stat = float(split_mmd(sums, sizes, observed)[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, n_permutations, PERMUTATION_CHUNK):
        p = min(PERMUTATION_CHUNK, n_permutations - start)
        picks = np.argsort(rng.random((p, g)), axis=1)[:, :n_x]
        masks = np.zeros((p, g), bool)
        np.put_along_axis(masks, picks, True, axis=1)
        exceed += int(np.sum(split_mmd(sums, sizes, masks) >= stat - TIE_TOL))
    return stat, (1 + exceed) / (1 + n_permutations)


def drift_test(gram: PooledGram, n_permutations: int = 1000, seed: int = 0) -> DriftResult:
    """The reference-vs-new permutation test on a pooled gram."""
    mmd, p = permutation_test(gram.sums, gram.sizes, gram.n_x, n_permutations, seed)
    return DriftResult(
        mmd=mmd,
        p_value=p,
        n_reference=int(gram.sizes[: gram.n_x].sum()),
        n_new=int(gram.sizes[gram.n_x :].sum()),
        n_reference_groups=gram.n_x,
        n_new_groups=len(gram.sizes) - gram.n_x,
        n_permutations=n_permutations,
        bandwidth=gram.bandwidth,
        subsampled=gram.subsampled,
    )


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    x_groups: np.ndarray,
    y_groups: np.ndarray,
    n_permutations: int = 1000,
    seed: int = 0,
    **gram_options,
) -> DriftResult:
    """Reference rows ``x`` vs new rows ``y``: unbiased MMD^2 and the group permutation p-value."""
    gram = pooled_gram(x, y, x_groups, y_groups, seed=seed, **gram_options)
    return drift_test(gram, n_permutations, seed)


@dataclass(frozen=True)
class WindowResult:
    """One sliding window of new groups tested against the whole reference."""

    start: int  # index of the window's first group in the sequence
    groups: list
    mmd: float
    p_value: float


def sliding_windows(
    gram: PooledGram,
    sequence: Sequence[Hashable],
    window: int,
    n_permutations: int = 1000,
    seed: int = 0,
) -> list[WindowResult]:
    """Online drift: every window of ``window`` consecutive new groups of ``sequence`` (time order)
    tested against the reference groups; groups not in the gram (subsampled away) are skipped."""
    index = {label: i for i, label in enumerate(gram.labels[gram.n_x :].tolist(), gram.n_x)}
    present = [label for label in sequence if label in index]
    reference = np.arange(gram.n_x)
    results = []
    for start in range(len(present) - window + 1):
        members = present[start : start + window]
        idx = np.concatenate([reference, [index[label] for label in members]])
        sub = gram.sums[np.ix_(idx, idx)]
        mmd, p = permutation_test(sub, gram.sizes[idx], gram.n_x, n_permutations, seed + start)
        results.append(WindowResult(start=start, groups=list(members), mmd=mmd, p_value=p))
    return results


def first_detection(windows: Sequence[WindowResult], alpha: float) -> WindowResult | None:
    """The first window whose p-value is below ``alpha`` (a per-window level: repeated looks raise
    the false-alarm rate of a long sequence)."""
    return next((w for w in windows if w.p_value < alpha), None)
