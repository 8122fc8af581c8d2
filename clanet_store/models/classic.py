"""The training-free ``classic`` encoder: a fixed texture descriptor of a grey patch (issue 18).

A 112 x 112 uint8 patch is first averaged over 2 x 2 pixels (56 x 56: the finest scale carries
mostly sensor noise and defocus, two of the paper's image-quality batch effects), then
normalised by its own median and inter-quartile range (``z = (g - median) / max(IQR, 0.25)``:
blind to brightness and contrast). On ``z`` the descriptor measures, in this order:

* intensity shape: percentiles 1, 5, 10, 75, 90, 95, 99 of ``z`` and its mean (8);
* grey-level co-occurrence (GLCM) of ``z`` quantised into 8 equal-population levels (the
  patch's own octiles: blind to any monotone change of grey levels): contrast, dissimilarity,
  homogeneity, angular second moment, entropy and correlation of the symmetric matrix averaged
  over 4 directions, at distances 1, 2, 4, 8 (24);
* rotation-invariant uniform LBP (riu2, 8 bilinear samples) histograms at radii 1, 2, 3 (30);
* gradient and Laplacian: mean, median and 90th percentile of the gradient magnitude, mean and
  90th percentile of the absolute Laplacian, the structure-tensor coherence of the whole patch
  and the mean coherence of its 8 x 8 blocks (7);
* radial power spectrum of the Hann-windowed ``z``: log10 of the power fraction in 8
  log-spaced frequency bands from 1/56 to 1/2 cycle per pixel (8);
* granularity: the fraction of ``z - min z`` removed by each successive grey opening with a
  square of half-side 1..6 (bright granules) and the same for closings (dark granules) (12).

89 raw features. Each is standardised with a mean and a standard deviation frozen from a sample
of the store's patches at its first classic encode (`fit_statistics`) and clipped to +-5, so
one extreme feature cannot dominate the cosine. ``ClassicEncoder.model_id`` hashes the
definition, ``CLASSIC_VERSION`` and the statistics. Each patch's vector depends only on its
pixels and the statistics. References: Haralick et al. 1973 (GLCM), Ojala et al. 2002 (LBP
riu2), Maragos 1989 (granulometry / pattern spectrum), as in CellProfiler's texture and
granularity measurements.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

import numpy as np
import torch

from clanet_store.imaging.jit import kernel

CLASSIC_ARCH = "classic"
# Part of every classic model_id: bump it when any feature's computation changes.
CLASSIC_VERSION = 1
PATCH_SIDE = 112
POOL = 2
SIDE = PATCH_SIDE // POOL
MIN_SCALE = 1.0 / (POOL * POOL)  # one grey level of a pooled pixel
PERCENTILES = (1, 5, 10, 75, 90, 95, 99)
GLCM_LEVELS = 8
GLCM_DISTANCES = (1, 2, 4, 8)
GLCM_FEATURES = ("contrast", "dissimilarity", "homogeneity", "asm", "entropy", "correlation")
LBP_RADII = (1, 2, 3)
LBP_POINTS = 8
GRADIENT_FEATURES = (
    "grad_mean",
    "grad_p50",
    "grad_p90",
    "laplace_mean",
    "laplace_p90",
    "coherence",
    "block_coherence",
)
BLOCK = 8
SPECTRUM_BANDS = 8
GRANULARITY_STEPS = 6
CLIP = 5.0
FIT_PATCHES = 2048
FEATURE_NAMES = (
    *(f"z_p{p}" for p in PERCENTILES),
    "z_mean",
    *(f"glcm_{f}_d{d}" for d in GLCM_DISTANCES for f in GLCM_FEATURES),
    *(f"lbp_r{r}_{c}" for r in LBP_RADII for c in range(LBP_POINTS + 2)),
    *GRADIENT_FEATURES,
    *(f"spectrum_band{b}" for b in range(SPECTRUM_BANDS)),
    *(f"granularity_{kind}{k}" for kind in ("open", "close") for k in range(1, 7)),
)
N_FEATURES = len(FEATURE_NAMES)
_N_KERNEL = N_FEATURES - SPECTRUM_BANDS  # all but the spectrum come from `_describe_kernel`


def definition() -> dict[str, Any]:
    """Everything that fixes the raw features (part of the model_id)."""
    return {
        "version": CLASSIC_VERSION,
        "pool": POOL,
        "min_scale": MIN_SCALE,
        "percentiles": PERCENTILES,
        "glcm_levels": GLCM_LEVELS,
        "glcm_distances": GLCM_DISTANCES,
        "lbp_radii": LBP_RADII,
        "lbp_points": LBP_POINTS,
        "block": BLOCK,
        "spectrum_bands": SPECTRUM_BANDS,
        "granularity_steps": GRANULARITY_STEPS,
        "clip": CLIP,
        "features": FEATURE_NAMES,
    }


def describe(patches: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Raw (unstandardised) features of [N, 112, 112] uint8 patches -> [N, 89] float64.

    Chunks of patches run on ``threads`` threads (default: every core; the kernel releases the
    GIL); the result of a patch never depends on the others or on the chunking.
    """
    patches = np.ascontiguousarray(patches, np.uint8)
    if patches.ndim != 3 or patches.shape[1:] != (PATCH_SIDE, PATCH_SIDE):
        raise ValueError(f"expected patches [N, {PATCH_SIDE}, {PATCH_SIDE}], got {patches.shape}")
    threads = max(1, threads or os.cpu_count() or 1)
    chunks = np.array_split(np.arange(len(patches)), min(threads, max(1, len(patches))))
    if len(chunks) == 1:
        return _describe_chunk(patches)
    with ThreadPoolExecutor(len(chunks)) as pool:
        parts = list(pool.map(lambda idx: _describe_chunk(patches[idx]), chunks))
    return np.concatenate(parts)


def _describe_chunk(patches: np.ndarray) -> np.ndarray:
    features = np.empty((len(patches), N_FEATURES), np.float64)
    windowed = np.empty((len(patches), SIDE, SIDE), np.float64)
    _describe_kernel(patches, _LBP_INDEX, _LBP_WEIGHTS, features, windowed)
    features[:, _N_KERNEL:] = _spectrum(windowed)
    return features


def _lbp_samples() -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sampling of the LBP points, point p at angle 2 pi p / P and radius r.

    Returns [radii, P, 4] int (dy0, dx0, dy1, dx1) offsets of the four pixels around each point
    and [radii, P, 4] float weights of (dy0, dx0), (dy0, dx1), (dy1, dx0), (dy1, dx1); on a
    grid axis the second pixel is the first, with weight 0.
    """
    angles = 2 * np.pi * np.arange(LBP_POINTS) / LBP_POINTS
    offsets = np.stack(
        [np.stack([-r * np.sin(angles), r * np.cos(angles)], 1) for r in LBP_RADII]
    ).round(6)
    low = np.floor(offsets)
    frac = offsets - low
    high = low + (frac > 0)
    index = np.concatenate([low, high], -1).astype(np.int64)
    fy, fx = frac[..., 0], frac[..., 1]
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], -1)
    return index, weights


_LBP_INDEX, _LBP_WEIGHTS = _lbp_samples()


def _band_matrix() -> np.ndarray:
    """[56 x 29, bands] weights of the rfft2 bins in each log-spaced radial band (the
    conjugate-symmetric columns counted twice)."""
    fy = np.fft.fftfreq(SIDE)[:, None]
    fx = np.fft.rfftfreq(SIDE)[None, :]
    radius = np.hypot(fy, fx)
    twice = np.where((fx == 0) | (fx == 0.5), 1.0, 2.0) * np.ones_like(radius)
    edges = np.geomspace(1.0 / SIDE, 0.5, SPECTRUM_BANDS + 1)
    band = np.digitize(radius, edges) - 1  # -1 below the first edge (DC), bands beyond 0.5
    matrix = np.zeros((radius.size, SPECTRUM_BANDS))
    inside = (band >= 0) & (band < SPECTRUM_BANDS)
    matrix[np.flatnonzero(inside), band[inside]] = twice[inside]
    return matrix


_BANDS = _band_matrix()


def _spectrum(windowed: np.ndarray) -> np.ndarray:
    """Log band-power fractions, one patch at a time: a batched FFT or matrix product may round
    differently with the batch size, and a patch's vector must not depend on its batch."""
    out = np.empty((len(windowed), SPECTRUM_BANDS))
    for n, image in enumerate(windowed):
        bands = np.einsum("i,ib->b", (np.abs(np.fft.rfft2(image)) ** 2).ravel(), _BANDS)
        total = bands.sum()
        out[n] = np.log10(bands / (total if total > 0 else 1.0) + 1e-6)
    return out


@kernel(nogil=True)
def _describe_kernel(
    patches: np.ndarray,
    lbp_index: np.ndarray,
    lbp_weights: np.ndarray,
    out: np.ndarray,
    windowed: np.ndarray,
) -> None:
    n_pix = SIDE * SIDE
    hann = np.empty((SIDE, SIDE))
    for i in range(SIDE):
        for j in range(SIDE):
            hann[i, j] = (0.5 - 0.5 * math.cos(2 * math.pi * i / (SIDE - 1))) * (
                0.5 - 0.5 * math.cos(2 * math.pi * j / (SIDE - 1))
            )
    for n in range(patches.shape[0]):
        p = patches[n]
        g = np.empty((SIDE, SIDE))
        for i in range(SIDE):
            for j in range(SIDE):
                s = 0.0
                for a in range(POOL):
                    for b in range(POOL):
                        s += p[POOL * i + a, POOL * j + b]
                g[i, j] = s / (POOL * POOL)
        flat = np.sort(g.ravel())
        median = _quantile(flat, 0.5)
        scale = max(_quantile(flat, 0.75) - _quantile(flat, 0.25), MIN_SCALE)
        z = (g - median) / scale
        zs = (flat - median) / scale
        f = 0
        for q in PERCENTILES:
            out[n, f] = _quantile(zs, q / 100.0)
            f += 1
        out[n, f] = z.mean()
        f += 1
        # equal-population levels: thresholds at the patch's own quantiles
        levels = np.zeros((SIDE, SIDE), np.int64)
        for t in range(1, GLCM_LEVELS):
            cut = zs[(t * n_pix) // GLCM_LEVELS]
            for i in range(SIDE):
                for j in range(SIDE):
                    if z[i, j] >= cut:
                        levels[i, j] += 1
        for d in GLCM_DISTANCES:
            _glcm_features(levels, d, out[n, f : f + 6])
            f += 6
        for r in range(lbp_index.shape[0]):
            _lbp_histogram(z, lbp_index[r], lbp_weights[r], out[n, f : f + LBP_POINTS + 2])
            f += LBP_POINTS + 2
        _gradient_features(z, out[n, f : f + 7])
        f += 7
        _granularity(z, out[n, f : f + GRANULARITY_STEPS], 1.0)
        f += GRANULARITY_STEPS
        _granularity(z, out[n, f : f + GRANULARITY_STEPS], -1.0)
        windowed[n] = z * hann


@kernel(nogil=True)
def _quantile(sorted_values: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default method)."""
    pos = q * (sorted_values.size - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, sorted_values.size - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


@kernel(nogil=True)
def _glcm_features(levels: np.ndarray, d: int, out: np.ndarray) -> None:
    """Haralick features of the symmetric GLCM summed over offsets (0, d), (d, d), (d, 0),
    (d, -d)."""
    m = np.zeros((GLCM_LEVELS, GLCM_LEVELS))
    h, w = levels.shape
    for dy, dx in ((0, d), (d, d), (d, 0), (d, -d)):
        for i in range(max(0, -dy), min(h, h - dy)):
            for j in range(max(0, -dx), min(w, w - dx)):
                a, b = levels[i, j], levels[i + dy, j + dx]
                m[a, b] += 1.0
                m[b, a] += 1.0
    m /= m.sum()
    mu = 0.0
    for i in range(GLCM_LEVELS):
        for j in range(GLCM_LEVELS):
            mu += i * m[i, j]
    var = 0.0
    for i in range(GLCM_LEVELS):
        for j in range(GLCM_LEVELS):
            var += (i - mu) ** 2 * m[i, j]
    out[:] = 0.0
    cov = 0.0
    for i in range(GLCM_LEVELS):
        for j in range(GLCM_LEVELS):
            v = m[i, j]
            out[0] += v * (i - j) ** 2
            out[1] += v * abs(i - j)
            out[2] += v / (1.0 + (i - j) ** 2)
            out[3] += v * v
            if v > 0:
                out[4] -= v * math.log(v)
            cov += v * (i - mu) * (j - mu)
    out[5] = cov / var if var > 1e-12 else 1.0


@kernel(nogil=True)
def _lbp_histogram(z: np.ndarray, index: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """riu2 LBP code fractions over the pixels whose samples all lie inside the patch
    (`_lbp_samples` gives ``index`` and ``weights``)."""
    points = index.shape[0]
    border = np.abs(index).max()
    h, w = z.shape
    out[:] = 0.0
    bits = np.empty(points, np.int64)
    for i in range(border, h - border):
        for j in range(border, w - border):
            centre = z[i, j]
            ones = 0
            for p in range(points):
                y0, x0, y1, x1 = i + index[p, 0], j + index[p, 1], i + index[p, 2], j + index[p, 3]
                sample = (
                    weights[p, 0] * z[y0, x0]
                    + weights[p, 1] * z[y0, x1]
                    + weights[p, 2] * z[y1, x0]
                    + weights[p, 3] * z[y1, x1]
                )
                bits[p] = 1 if sample >= centre else 0
                ones += bits[p]
            changes = 0
            for p in range(points):
                changes += bits[p] != bits[(p + 1) % points]
            out[ones if changes <= 2 else points + 1] += 1.0
    out /= out.sum()


@kernel(nogil=True)
def _gradient_features(z: np.ndarray, out: np.ndarray) -> None:
    h, w = z.shape
    inner = (h - 2) * (w - 2)
    magnitude = np.empty(inner)
    laplace = np.empty(inner)
    jxx, jyy, jxy = np.zeros((h, w)), np.zeros((h, w)), np.zeros((h, w))
    k = 0
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            gx = 0.5 * (z[i, j + 1] - z[i, j - 1])
            gy = 0.5 * (z[i + 1, j] - z[i - 1, j])
            magnitude[k] = math.sqrt(gx * gx + gy * gy)
            laplace[k] = abs(z[i - 1, j] + z[i + 1, j] + z[i, j - 1] + z[i, j + 1] - 4 * z[i, j])
            jxx[i, j], jyy[i, j], jxy[i, j] = gx * gx, gy * gy, gx * gy
            k += 1
    magnitude.sort()
    laplace.sort()
    out[0] = magnitude.mean()
    out[1] = _quantile(magnitude, 0.5)
    out[2] = _quantile(magnitude, 0.9)
    out[3] = laplace.mean()
    out[4] = _quantile(laplace, 0.9)
    out[5] = _coherence(jxx.sum(), jyy.sum(), jxy.sum())
    total, blocks = 0.0, 0
    for bi in range(0, h - BLOCK + 1, BLOCK):
        for bj in range(0, w - BLOCK + 1, BLOCK):
            total += _coherence(
                jxx[bi : bi + BLOCK, bj : bj + BLOCK].sum(),
                jyy[bi : bi + BLOCK, bj : bj + BLOCK].sum(),
                jxy[bi : bi + BLOCK, bj : bj + BLOCK].sum(),
            )
            blocks += 1
    out[6] = total / blocks


@kernel(nogil=True)
def _coherence(jxx: float, jyy: float, jxy: float) -> float:
    """(l1 - l2) / (l1 + l2) of the structure tensor: 0 isotropic, 1 one orientation."""
    trace = jxx + jyy
    if trace <= 1e-12:
        return 0.0
    return math.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / trace


@kernel(nogil=True)
def _granularity(z: np.ndarray, out: np.ndarray, sign: float) -> None:
    """Pattern spectrum: the fraction of the signal each successive opening (sign 1, bright
    granules) or closing (sign -1, dark granules) with a (2k + 1) square removes.

    The erosion by a (2k + 1) square is k erosions by a 3 x 3 one; both are separable, and
    windows are clamped to the patch.
    """
    x = sign * z
    x = x - x.min()
    total = x.sum()
    eroded, rows, opened = x.copy(), np.empty_like(x), np.empty_like(x)
    previous = total
    for k in range(1, GRANULARITY_STEPS + 1):
        _window_extreme(eroded, rows, 1, 1.0)
        _window_extreme(rows.T, eroded.T, 1, 1.0)
        _window_extreme(eroded, rows, k, -1.0)
        _window_extreme(rows.T, opened.T, k, -1.0)
        current = opened.sum()
        out[k - 1] = (previous - current) / total if total > 1e-12 else 0.0
        previous = current


@kernel(nogil=True)
def _window_extreme(src: np.ndarray, dst: np.ndarray, radius: int, sign: float) -> None:
    """``dst[i, j]``: the minimum (sign 1) or maximum (sign -1) of ``src[i, j - radius : j +
    radius + 1]``, clamped to the row; van Herk / Gil-Werman, 3 comparisons per pixel whatever
    the radius (exact: only comparisons)."""
    h, w = src.shape
    size = 2 * radius + 1
    n = w + 2 * radius
    n += (-n) % size  # whole blocks
    padded = np.full(n, sign * np.inf)
    prefix, suffix = np.empty(n), np.empty(n)
    for i in range(h):
        for j in range(w):
            padded[radius + j] = src[i, j]
        for start in range(0, n, size):
            prefix[start] = padded[start]
            for j in range(start + 1, start + size):
                prefix[j] = _extreme(prefix[j - 1], padded[j], sign)
            suffix[start + size - 1] = padded[start + size - 1]
            for j in range(start + size - 2, start - 1, -1):
                suffix[j] = _extreme(suffix[j + 1], padded[j], sign)
        for j in range(w):
            dst[i, j] = _extreme(suffix[j], prefix[j + size - 1], sign)


@kernel(nogil=True)
def _extreme(a: float, b: float, sign: float) -> float:
    return b if sign * b < sign * a else a


@dataclasses.dataclass(frozen=True)
class ClassicConfig:
    """The classic encoder's definition plus its frozen statistics (the models row's config).

    mean / std: per raw feature, over ``fit_patches`` patches of the store it was fitted on.
    fit_split / fit_sequences: the split (``"<kind> r<repeat>"``) whose training sequences the
    patches were drawn from, and those sequence keys (None: from all stored patches), so whether
    the statistics saw a split's test side can be read from the record (`pipelines.inductive`).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    fit_patches: int
    arch: str = CLASSIC_ARCH
    img_size: int = PATCH_SIDE
    version: int = CLASSIC_VERSION
    fit_split: str | None = None
    fit_sequences: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record; the fit_* keys only when set (so a whole-store encoder keeps the model_id
        it had before they existed)."""
        record = dataclasses.asdict(self)
        if self.fit_sequences is None:
            del record["fit_split"], record["fit_sequences"]
        return {**record, "definition": definition()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassicConfig:
        """From a models row's config; ValueError when it was made by another definition."""
        if data.get("version") != CLASSIC_VERSION or data.get("definition") != json.loads(
            json.dumps(definition())
        ):
            raise ValueError(
                f"classic encoder version {data.get('version')} was recorded, this is version "
                f"{CLASSIC_VERSION}: re-encode with --encoder classic"
            )
        sequences = data.get("fit_sequences")
        return cls(
            tuple(data["mean"]),
            tuple(data["std"]),
            int(data["fit_patches"]),
            fit_split=data.get("fit_split"),
            fit_sequences=None if sequences is None else tuple(sequences),
        )


def fit_statistics(
    raw: np.ndarray, fit_split: str | None = None, fit_sequences: tuple[str, ...] | None = None
) -> ClassicConfig:
    """Frozen standardisation of raw features (`describe` of a sample of patches), drawn from
    the training sequences ``fit_sequences`` of split ``fit_split`` when given.

    A feature constant over the sample gets std 1 (it then contributes 0 to every vector).
    """
    if len(raw) == 0:
        raise ValueError("no patches to fit the classic encoder's statistics on")
    mean = raw.mean(0)
    std = raw.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    return ClassicConfig(
        tuple(map(float, mean)),
        tuple(map(float, std)),
        len(raw),
        fit_split=fit_split,
        fit_sequences=fit_sequences,
    )


class ClassicEncoder:
    """uint8 patches -> standardised classic features, float32 [N, 89]; the Encoder protocol."""

    weights_format = "classic"
    random_init = False
    device = torch.device("cpu")

    def __init__(
        self,
        config: ClassicConfig,
        threads: int | None = None,
        known: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """``known``: (patches, their `describe` features), e.g. the sample the statistics were
        fitted on, so the encode that follows does not compute them twice; a patch is looked up
        by its pixels, so its vector is the same either way."""
        self.config = config
        self.threads = threads
        self._mean = np.asarray(config.mean)
        self._std = np.asarray(config.std)
        self._known = {} if known is None else dict(zip(map(_key, known[0]), known[1], strict=True))

    @property
    def embedding_dim(self) -> int:
        return N_FEATURES

    @property
    def weights_source(self) -> str:
        split = f" of the training side of {self.config.fit_split}" if self.config.fit_split else ""
        return f"classic-v{CLASSIC_VERSION}(fit on {self.config.fit_patches} patches{split})"

    @cached_property
    def model_id(self) -> str:
        """16 hex digits of SHA-256 over the config (definition, version, statistics) as JSON."""
        text = json.dumps(self.config.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """[N, 112, 112] uint8 -> [N, 89] float32."""
        raw = np.empty((len(patches), N_FEATURES))
        keys = [_key(patch) for patch in patches]
        new = [i for i, key in enumerate(keys) if key not in self._known]
        for i, key in enumerate(keys):
            if key in self._known:
                raw[i] = self._known[key]
        if new:
            raw[new] = describe(patches[new], self.threads)
        z = (raw - self._mean) / self._std
        return np.clip(z, -CLIP, CLIP).astype(np.float32)

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.dtype != torch.uint8:
            raise ValueError(f"the classic encoder takes uint8 patches, got {patches.dtype}")
        return torch.from_numpy(self.embed(patches.cpu().numpy()))


def _key(patch: np.ndarray) -> bytes:
    """A patch's pixels as a short digest (the lookup key of known features)."""
    return hashlib.blake2b(np.ascontiguousarray(patch, np.uint8).tobytes(), digest_size=16).digest()
