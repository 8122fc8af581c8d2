"""Is an encoder's output informative at all? Spread and dimensionality of its embeddings.

SPEC 5 / 9: a collapsed DINO run, and a random-init ViT (whose LayerNormed CLS tokens are almost
the same vector for every input), give pairwise cosine distances all near 0 (the demo's 2-epoch
DINO run: median 0.001, largest 0.007). Then every neighbour is at distance ~0, search ranks by
noise and a classifier sees one point. Two numbers catch it:

* the **cosine distance of random pairs** of distinct rows (median and 1st percentile): near 0
  when every vector points the same way, whatever its length;
* the **effective rank** of the centred matrix (Roy & Vetterli 2007): exp of the Shannon entropy
  of the singular values normalised to sum 1; 1 when all the variation lies along one line, up
  to the width when it is spread evenly. It catches vectors that differ, but along one direction
  only (e.g. an encoder that sees brightness and nothing else).

**Collapse rule**: ``collapsed`` when the median cosine distance is below ``MIN_MEDIAN_DISTANCE``
(0.01, ten times the collapsed runs' 0.001 and far below the ~0.1-1 of encoders whose neighbours
differ) or the effective rank is below ``MIN_EFFECTIVE_RANK`` (2: one direction can carry a scalar
at most, not a description of a patch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MIN_MEDIAN_DISTANCE = 0.01
MIN_EFFECTIVE_RANK = 2.0
# Rows whose singular values give the effective rank (a seeded sample above this): with several
# times more rows than the width (1536) the sample's spectrum is close to the full matrix's; the
# d x d Gram matrix in float64 (float32 rounding would add ~1e-7 x the top eigenvalue to every
# direction and inflate the rank of a rank-1 set) costs ~1 s for 10,000 x 1536.
RANK_ROWS = 10_000


@dataclass(frozen=True)
class EmbeddingHealth:
    """Spread and dimensionality of a set of embeddings, and whether they are collapsed."""

    rows: int
    dim: int
    pairs: int
    cosine_distance_median: float
    cosine_distance_p01: float
    effective_rank: float
    collapsed: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: the numbers and the verdict."""
        verdict = "COLLAPSED" if self.collapsed else "not collapsed"
        return (
            f"health: median cosine distance {self.cosine_distance_median:.4f} "
            f"(1st percentile {self.cosine_distance_p01:.4f}) over {self.pairs} random pairs, "
            f"effective rank {self.effective_rank:.1f} of {self.dim}: {verdict}"
        )

    def warning(self) -> str | None:
        """A loud warning for collapsed embeddings (saying which rule fired), None otherwise."""
        if not self.collapsed:
            return None
        reasons = []
        if self.cosine_distance_median < MIN_MEDIAN_DISTANCE:
            reasons.append(
                f"median cosine distance {self.cosine_distance_median:.4f} < {MIN_MEDIAN_DISTANCE}"
            )
        if self.effective_rank < MIN_EFFECTIVE_RANK:
            reasons.append(f"effective rank {self.effective_rank:.1f} < {MIN_EFFECTIVE_RANK:g}")
        return (
            f"WARNING: these embeddings are COLLAPSED ({' and '.join(reasons)}): neighbours, "
            "models and QC built on them carry no information about the cells"
        )


def random_pairs(n: int, pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` random pairs (i, j) of distinct row indices below ``n`` (n >= 2)."""
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n  # any other row, uniformly
    return i, j


def effective_rank(vectors: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred matrix; 0 with no spread."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    gram = x.T @ x if x.shape[0] > x.shape[1] else x @ x.T
    singular = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    total = singular.sum()
    if total <= 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0))):
        return 0.0
    p = singular[singular > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_health(vectors: np.ndarray, *, seed: int = 0, pairs: int = 10_000) -> EmbeddingHealth:
    """Cosine distances of ``pairs`` random pairs of distinct rows (seeded), the effective rank
    of the centred rows (of a seeded sample of ``RANK_ROWS`` above that) and the collapse rule of
    the module doc. Needs at least two rows."""
    x = np.asarray(vectors, dtype=np.float32)
    n, dim = x.shape
    if n < 2:
        raise ValueError(f"embedding health needs at least 2 vectors, got {n}")
    rng = np.random.default_rng(seed)
    i, j = random_pairs(n, pairs, rng)
    norms = np.linalg.norm(x, axis=1).astype(np.float64)
    dots = np.einsum("ij,ij->i", x[i].astype(np.float64), x[j].astype(np.float64))
    denom = norms[i] * norms[j]
    cosine = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    distance = 1.0 - np.clip(cosine, -1.0, 1.0)
    sample = x if n <= RANK_ROWS else x[np.sort(rng.choice(n, RANK_ROWS, replace=False))]
    rank = effective_rank(sample)
    median = float(np.median(distance))
    return EmbeddingHealth(
        rows=n,
        dim=dim,
        pairs=pairs,
        cosine_distance_median=median,
        cosine_distance_p01=float(np.quantile(distance, 0.01)),
        effective_rank=rank,
        collapsed=median < MIN_MEDIAN_DISTANCE or rank < MIN_EFFECTIVE_RANK,
    )
