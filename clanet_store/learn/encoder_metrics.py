"""How much cell-line signal an encoder's embeddings carry across batches, and how much batch.

SPEC 9. The **group** is the unit of exclusion: the (cell_line, batch) pair, or (cell_line,
batch, well) for a line imaged in a single batch (other wells stand in for other batches;
``group_by`` and ``lines_by_well`` say so): frames of one time-lapse field are correlated, so a
query's neighbours never come from its own group. The metrics, each next to its chance:
``knn_accuracy_cross_batch`` (DINO's weighted k-NN, k = 20, T = 0.07; chance from random group
rankings that keep the neighbours' clumps), ``map_cross_batch`` (equal to copairs' average
precision, vectorised over query chunks; chance copairs' ``expected_ap``) and
``batch_effect_index`` (0 = the nearest same-line neighbours come from the query's own batch no
more often than chance, 1 = always). k-NN and mAP come with a 95 % interval from a bootstrap that
resamples whole fields (`field_bootstrap_ci`): a field's frames are not independent. Queries: a
seeded sample of at most ``max_queries`` rows of lines with at least two groups; candidates:
every row. The full definitions and why: docs/evaluate-encoder.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from scipy import sparse
from scipy.special import digamma

from clanet_store.models.health import EmbeddingHealth, embedding_health

KNN_K = 20
KNN_TEMPERATURE = 0.07
MAX_QUERIES = 2000
CHANCE_DRAWS = 200  # random placements of the neighbours' groups for the k-NN chance
BOOTSTRAP_DRAWS = 2000  # resamples of the queries' fields for the 95 % intervals
QUERY_CHUNK = 128  # queries per similarity block: 128 x 100,000 float32 = 51 MB
LEVELS = ("patch", "image", "sequence")
# The keys each level's rows carry (patch rows also carry ``rank``).
LEVEL_KEYS = ("image_id", "sequence_id", "cell_line", "batch", "well")


@dataclass(frozen=True)
class CrossBatchMetrics:
    """Cross-batch retrieval of the cell line and the batch-effect index (module doc)."""

    queries: int
    knn_accuracy_cross_batch: float | None
    knn_accuracy_cross_batch_chance: float | None
    map_cross_batch: float | None
    map_cross_batch_chance: float | None
    knn_accuracy_cross_batch_ci95: tuple[float, float] | None
    map_cross_batch_ci95: tuple[float, float] | None
    batch_effect_index: float | None
    batch_effect_queries: int
    group_by: str
    lines_by_well: tuple[str, ...]
    k: int
    temperature: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["lines_by_well"] = list(self.lines_by_well)
        for key in ("knn_accuracy_cross_batch_ci95", "map_cross_batch_ci95"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


@dataclass(frozen=True)
class LevelEvaluation:
    """One level's rows, health and cross-batch metrics."""

    level: str
    rows: int
    health: EmbeddingHealth
    metrics: CrossBatchMetrics

    def as_dict(self) -> dict:
        return {"rows": self.rows, **self.health.as_dict(), **self.metrics.as_dict()}


def exclusion_groups(
    lines: np.ndarray, batches: np.ndarray, wells: np.ndarray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Group codes (``(line, batch)``, or ``(line, batch, well)`` for a line with one batch) and
    the lines grouped by well."""
    frame = pl.DataFrame({"line": lines, "batch": batches, "well": wells}, strict=False)
    frame = frame.with_columns(pl.col("line", "batch", "well").cast(pl.String))
    single = frame.group_by("line").agg(pl.col("batch").n_unique() == 1).filter("batch")["line"]
    by_well = frame["line"].is_in(single.implode())
    keys = frame.select(
        "line", "batch", well=pl.when(by_well).then(pl.col("well")).otherwise(pl.lit(""))
    )
    codes = keys.select(pl.struct(pl.all()).rank("dense") - 1).to_series().to_numpy()
    return codes.astype(np.int64), tuple(sorted(single.to_list()))


def group_by_text(lines_by_well: tuple[str, ...], n_lines: int) -> str:
    """``batch``, ``well`` (every line has one batch) or ``batch; well for lines with one
    batch``."""
    if not lines_by_well:
        return "batch"
    if len(lines_by_well) == n_lines:
        return "well"
    return "batch; well for lines with one batch"


def expected_ap(positives: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Expected average precision of a random ranking of ``candidates`` rows holding
    ``positives`` positives: (1/L) [H_L + (M - 1)(L - H_L) / (L - 1)] (copairs' formula)."""
    m = np.asarray(positives, dtype=np.float64)
    n = np.asarray(candidates, dtype=np.float64)
    harmonic = digamma(n + 1) + np.euler_gamma
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (harmonic + (m - 1) * (n - harmonic) / (n - 1)) / n
    return np.where(n <= 1, (m >= 1).astype(np.float64), value)


def cross_batch_metrics(
    vectors: np.ndarray,
    lines: np.ndarray,
    batches: np.ndarray,
    wells: np.ndarray,
    fields: np.ndarray,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    max_queries: int = MAX_QUERIES,
    seed: int = 0,
) -> CrossBatchMetrics:
    """The module doc's metrics for rows ``vectors`` with their cell line, batch, well and
    field (sequence id) labels.

    Rows are sorted by (line, group, field) first: a field lies inside a group and a group
    inside a line, so each is a contiguous range of columns of a query's similarity row, and
    excluding a group or taking a line's rows is a slice, not a mask over every row.
    """
    line_names, y = np.unique(np.asarray(lines).astype(str), return_inverse=True)
    group, lines_by_well = exclusion_groups(lines, batches, wells)
    _, field = np.unique(np.asarray(fields).astype(str), return_inverse=True)
    order = np.lexsort((field, group, y))
    y, group, field = y[order], group[order], field[order]
    x = np.asarray(vectors, dtype=np.float32)[order]
    x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-30)[:, None]
    lines_at, groups_at, fields_at = _ranges(y), _ranges(group), _ranges(field)
    n_lines = len(line_names)
    group_size = np.diff(groups_at, axis=1)[:, 0]
    group_line = y[groups_at[:, 0]]
    line_size = np.diff(lines_at, axis=1)[:, 0]
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(np.bincount(group_line, minlength=n_lines)[y] >= 2)
    if len(eligible) > max_queries:
        eligible = np.sort(rng.choice(eligible, max_queries, replace=False))
    q = eligible
    correct, voters, weights, ap, shares = _query_chunks(
        x, y, group, field, (lines_at, groups_at, fields_at), q, n_lines, k, temperature
    )
    knn_chance = _random_groups_knn_accuracy(voters, weights, group[q], group_line, group_size, rng)
    positive_count = line_size[y[q]] - group_size[group[q]]
    total = len(y) - group_size[group[q]]
    bei = None
    if shares:
        observed, expected, most = np.mean(shares, axis=0)
        bei = float((observed - expected) / (most - expected)) if most > expected else None
    some = len(q) > 0
    hits, aps = (np.concatenate(v) if some else np.zeros(0) for v in (correct, ap))
    return CrossBatchMetrics(
        queries=len(q),
        knn_accuracy_cross_batch=float(hits.mean()) if some else None,
        knn_accuracy_cross_batch_chance=knn_chance if some else None,
        map_cross_batch=float(aps.mean()) if some else None,
        map_cross_batch_chance=float(expected_ap(positive_count, total).mean()) if some else None,
        knn_accuracy_cross_batch_ci95=field_bootstrap_ci(hits, field[q], seed) if some else None,
        map_cross_batch_ci95=field_bootstrap_ci(aps, field[q], seed) if some else None,
        batch_effect_index=bei,
        batch_effect_queries=len(shares),
        group_by=group_by_text(lines_by_well, n_lines),
        lines_by_well=lines_by_well,
        k=k,
        temperature=temperature,
    )


def field_bootstrap_ci(
    values: np.ndarray, fields: np.ndarray, seed: int = 0, draws: int = BOOTSTRAP_DRAWS
) -> tuple[float, float]:
    """95 % percentile interval of the mean of per-query ``values`` (k-NN hits, APs) when whole
    fields are drawn with replacement: the frames of one time-lapse field are correlated, so
    resampling queries one by one would make the interval too narrow. One field: no spread."""
    _, codes = np.unique(fields, return_inverse=True)
    n = int(codes.max()) + 1
    sums = np.bincount(codes, weights=np.asarray(values, np.float64), minlength=n)
    sizes = np.bincount(codes, minlength=n).astype(np.float64)
    drawn = np.random.default_rng(seed).integers(0, n, size=(draws, n))  # fields, per draw
    means = sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _query_chunks(
    x: np.ndarray,
    y: np.ndarray,
    group: np.ndarray,
    field: np.ndarray,
    ranges: tuple[np.ndarray, np.ndarray, np.ndarray],
    queries: np.ndarray,
    n_lines: int,
    k: int,
    temperature: float,
) -> tuple[list, list, list, list, list]:
    """`cross_batch_metrics`' similarity pass, ``QUERY_CHUNK`` queries at a time: per chunk the
    k-NN hits, the voters' groups and weights, the APs, and per query its own-group share
    (`_own_group_share`, when defined)."""
    lines_at, groups_at, fields_at = ranges
    correct, voters, weights, ap, shares = [], [], [], [], []
    for start in range(0, len(queries), QUERY_CHUNK):
        q = queries[start : start + QUERY_CHUNK]
        sims = x[q] @ x.T
        positives = []
        for r, i in enumerate(q):
            ls, le = lines_at[y[i]]
            gs, ge = groups_at[group[i]]
            share = _own_group_share(
                sims[r, ls:le], gs - ls, ge - ls, *(fields_at[field[i]] - ls), k
            )
            if share is not None:
                shares.append(share)
            positives.append(-np.sort(-np.concatenate([sims[r, ls:gs], sims[r, ge:le]])))
            sims[r, gs:ge] = -np.inf  # the query's own group never answers
        top, w = _knn_weights(sims, k, temperature)
        correct.append(np.argmax(_votes(w, y[top], n_lines), axis=1) == y[q])
        voters.append(group[top])
        weights.append(w)
        ap.append(_average_precision(np.sort(sims, axis=1), positives))
    return correct, voters, weights, ap, shares


def _ranges(codes: np.ndarray) -> np.ndarray:
    """(start, end) of each code's run in ``codes`` sorted so that equal codes are adjacent
    (row = code; codes 0 .. max)."""
    values, first, counts = np.unique(codes, return_index=True, return_counts=True)
    out = np.zeros((int(values.max()) + 1, 2), np.int64)
    out[values, 0], out[values, 1] = first, first + counts
    return out


def _knn_weights(sims: np.ndarray, k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most similar candidates and their weights exp(cos / T) (excluded candidates
    hold -inf: weight 0)."""
    k = min(k, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sims, top, axis=1).astype(np.float64) / temperature)
    return top, weights


def _votes(weights: np.ndarray, labels: np.ndarray, n_lines: int) -> np.ndarray:
    """Per row, the summed weight of each line among its voters (``labels``: their lines)."""
    votes = np.zeros((len(weights), n_lines))
    rows = np.repeat(np.arange(len(weights)), weights.shape[1])
    np.add.at(votes, (rows, labels.ravel()), weights.ravel())
    return votes


def _random_groups_knn_accuracy(
    voters: list[np.ndarray],
    weights: list[np.ndarray],
    query_groups: np.ndarray,
    group_line: np.ndarray,
    group_size: np.ndarray,
    rng: np.random.Generator,
) -> float:
    """Mean k-NN accuracy over ``CHANCE_DRAWS`` draws in which each query's neighbours keep
    their weights and their clumps (the neighbours from one group), but each clump is a group
    drawn at random, without replacement and in proportion to its size, from the query's
    candidate groups (every group but its own; Gumbel top-k)."""
    if not voters:
        return 0.0
    groups, w = np.concatenate(voters), np.concatenate(weights)
    n, k = groups.shape
    n_lines = int(group_line.max()) + 1
    # Clump of each neighbour: 0 for the first group met, 1 for the next new one, ...
    first = np.argmax(groups[:, :, None] == groups[:, None, :], axis=2)
    is_new = first == np.arange(k)
    clump = np.take_along_axis(np.cumsum(is_new, axis=1) - 1, first, axis=1)
    log_size = np.log(group_size.astype(np.float64))
    rows = np.arange(n)
    truth = group_line[query_groups]
    c = min(k, len(group_line) - 1)
    accuracy = []
    for _ in range(CHANCE_DRAWS):
        keys = log_size + rng.gumbel(size=(n, len(group_line)))
        keys[rows, query_groups] = -np.inf
        best = np.argpartition(-keys, c - 1, axis=1)[:, :c]
        best = np.take_along_axis(best, np.argsort(-np.take_along_axis(keys, best, 1), 1), 1)
        drawn = np.take_along_axis(best, np.minimum(clump, c - 1), axis=1)
        picked = np.argmax(_votes(w, group_line[drawn], n_lines), axis=1)
        accuracy.append((picked == truth).mean())
    return float(np.mean(accuracy))


def _average_precision(everything: np.ndarray, positives: list[np.ndarray]) -> np.ndarray:
    """AP of each row: ``everything`` its candidates' similarities sorted ascending (excluded
    ones -inf), ``positives`` its positives' similarities, best first. The mean over positives
    of j / (j + negatives at least as similar as the j-th): a negative tied with a positive
    ranks above it (pessimistic; identical vectors score below chance, never by their order in
    the store). A float sort and binary searches rather than an argsort: the sort is
    SIMD-vectorised, ~20x faster than a stable argsort."""
    width = everything.shape[1]
    out = np.zeros(len(positives))
    for i, p in enumerate(positives):
        if len(p):
            at_least = width - np.searchsorted(everything[i], p, side="left")
            positives_at_least = np.searchsorted(-p, -p, side="right")
            j = np.arange(1, len(p) + 1)
            out[i] = np.mean(j / (at_least - positives_at_least + j))
    return out


def _own_group_share(
    line: np.ndarray, gs: int, ge: int, fs: int, fe: int, k: int
) -> tuple[float, float, float] | None:
    """For one query, from the similarities to its line's rows (``line``; its group at
    ``gs:ge``, its field at ``fs:fe``, both excluded as neighbours): the share of its k most
    similar rows outside its field that are in its group, the share a random choice gives, and
    the largest share possible; None without own-group rows outside the field."""
    own = (ge - gs) - (fe - fs)
    valid = len(line) - (fe - fs)
    if own <= 0 or valid <= own:
        return None
    rows = line.copy()
    rows[fs:fe] = -np.inf
    kk = min(k, valid)
    top = np.argpartition(-rows, kk - 1)[:kk]
    share = np.count_nonzero((top >= gs) & (top < ge)) / kk
    return share, own / valid, min(own, kk) / kk


def mean_by_group(vectors: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean vector of each distinct key (in key order) and the index of each key's first
    row (to carry its labels)."""
    unique, first, codes = np.unique(keys, return_index=True, return_inverse=True)
    counts = np.bincount(codes).astype(np.float32)
    return sum_by_code(vectors, codes, len(unique)) / counts[:, None], first


def sum_by_code(vectors: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """The sum of the rows of each group ``0 .. n_groups - 1`` (row i in group ``codes[i]``), as
    one sparse product: no Python loop, no copy per group."""
    n = len(codes)
    member = sparse.csr_matrix((np.ones(n, np.float32), (codes, np.arange(n))), (n_groups, n))
    return np.asarray(member @ vectors)


def level_rows(
    vectors: np.ndarray, keys: pl.DataFrame, top_k: int
) -> dict[str, tuple[np.ndarray, pl.DataFrame]]:
    """Each level's vectors and keys: every patch; each image's mean of its patches of rank
    below ``top_k`` (CCS, 0 = densest); each sequence's mean of its images."""
    images_in = keys["rank"].to_numpy() < top_k
    image_vectors, first = mean_by_group(vectors[images_in], keys["image_id"].to_numpy()[images_in])
    image_keys = keys.filter(pl.Series(images_in))[first].select(LEVEL_KEYS)
    sequence_vectors, first = mean_by_group(image_vectors, image_keys["sequence_id"].to_numpy())
    return {
        "patch": (vectors, keys.select(LEVEL_KEYS)),
        "image": (image_vectors, image_keys),
        "sequence": (sequence_vectors, image_keys[first]),
    }


def evaluate_levels(
    vectors: np.ndarray,
    keys: pl.DataFrame,
    *,
    top_k: int = 10,
    seed: int = 0,
    max_queries: int = MAX_QUERIES,
) -> dict[str, LevelEvaluation]:
    """Health and cross-batch metrics at the patch, image and sequence level; ``keys`` holds
    each patch row's ``LEVEL_KEYS`` and ``rank``. A level with fewer than two rows is left out."""
    out = {}
    for level, (x, rows) in level_rows(vectors, keys, top_k).items():
        if len(x) < 2:
            continue
        metrics = cross_batch_metrics(
            x,
            rows["cell_line"].to_numpy(),
            rows["batch"].to_numpy(),
            rows["well"].to_numpy(),
            rows["sequence_id"].to_numpy(),
            max_queries=max_queries,
            seed=seed,
        )
        out[level] = LevelEvaluation(level, len(x), embedding_health(x, seed=seed), metrics)
    return out
