"""``qc``: is a new selection of embeddings like the reference, and which images are abnormal?

Reads the two selections of one model's embeddings (filters as in ``search --where``, typed by
``stores.filters``; the top ``k`` patches of each image, SPEC 3), then:

* **drift** (``qc.drift``): unbiased MMD^2 with a permutation p-value. The exchangeable unit
  (SPEC 11) is the sequence (field) when each side has at least `MIN_SEQUENCES` of them
  (``permute_by="auto"``, the default): the images of one field are a time series of the same
  cells, not independent samples. With fewer, the images are permuted, but the report says
  plainly that the test cannot tell drift from field-to-field variation (``drift`` is None) and
  gives the reference's own field-to-field MMD^2 (between each pair of its sequences, from the
  same kernel sums) as the yardstick next to the new selection's. ``permute_by="image"`` forces
  the image test (its ``drift`` verdict is then the p-value's, with the same caveat);
  optionally the online mode over sliding windows of each new sequence's images;
* **anomaly** (``qc.anomaly``): an isolation forest fitted on the reference embeddings scores
  every new patch, and (unless ``quality=False``) a second one fitted on the reference patches'
  image-quality statistics (``qc.quality``: brightness, contrast, sharpness), read from the Zarr
  store; a patch's score is the larger of the two, so a blurred or washed-out image is caught even
  when the encoder maps it near the reference mean. Image and sequence scores are maxima; the
  thresholds are quantiles of the same maxima over the reference's out-of-bag scores; an image or
  sequence is flagged when its score is above its threshold or at least half of its patches are
  flagged. The scores
  go to the ``qc`` table (under the writer lock, replacing an earlier run with the same model,
  filters and parameters);
* a plate heatmap of the maximum image score per well (``qc.heatmap``), on request.

Returns a `QCReport` (``as_dict``: the JSON of ``clanet-store qc --format json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from lancedb.expr import col

from clanet_store.errors import ClanetError
from clanet_store.exports.scan import short_hash
from clanet_store.models.device import select_device
from clanet_store.progress import Progress, as_stage
from clanet_store.qc.anomaly import (
    anomaly_scores,
    fit_isolation_forest,
    group_max,
    group_mean,
    group_threshold,
)
from clanet_store.qc.drift import (
    DriftResult,
    PooledGram,
    drift_test,
    first_detection,
    pooled_gram,
    sliding_windows,
    split_mmd,
)
from clanet_store.qc.heatmap import save_plate_heatmap
from clanet_store.qc.quality import CHUNK, QUALITY_FEATURES, patch_quality
from clanet_store.schemas import load_schema
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import KEY_COLUMNS, EmbeddingStore, embeddings_schema
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.filters import parse_filters
from clanet_store.stores.lock import writer_lock
from clanet_store.stores.query import vectors
from clanet_store.stores.sequences import SEQUENCE_KEYS

GROUP_COLUMNS = {"image": "image_id", "sequence": "sequence_id"}
PERMUTE_BY = ("auto", *GROUP_COLUMNS)
# Sequences (fields) each side needs before "auto" permutes sequences (SPEC 11, issue 19).
MIN_SEQUENCES = 5
# An image (sequence) is also flagged when at least this share of its patches is: a fault that
# shifts every patch a little (defocus) raises no single patch above the reference's image maxima.
MAJORITY_FLAGGED = 0.5


@dataclass(frozen=True)
class QCParams:
    """What a QC run computes; ``k``, ``contamination``, ``n_trees``, ``quality`` and ``seed``
    also identify the run's rows in the ``qc`` table."""

    k: int | None = 10  # top-k patches per image (rank < k); None = every stored patch
    permute_by: str = "auto"  # auto | image | sequence: the unit the permutation test exchanges
    n_permutations: int = 1000
    alpha: float = 0.05  # drift is reported when p < alpha (also per online window)
    contamination: float = 0.01
    n_trees: int = 100
    quality: bool = True  # also score image-quality statistics of the patch pixels
    seed: int = 0
    max_rows: int = 100_000  # pooled rows above which the drift test subsamples (qc.drift)
    device: str = "cpu"


def images_without_patches(store: EmbeddingStore, filters: Sequence[str]) -> pl.DataFrame:
    """Ingested images of a selection in which the mask found no cells: they have no patches,
    so nothing to score, yet a blank, over-exposed or empty field is exactly what QC is for.

    Empty when the filters name a column the images table lacks (e.g. ``rank``).
    """
    try:
        where = parse_filters(filters, load_schema("images"))
    except ClanetError:
        return pl.DataFrame(
            schema={"path": pl.String, "well": pl.String, "timepoint_h": pl.Float64}
        )
    empty = (col("status") == "ok") & (col("patch_count") == 0)
    images = store.query("images").where(where).where(empty)
    return images.select("path", "well", "timepoint_h").to_polars().sort("path")


def _selection(
    store: EmbeddingStore,
    model: EncoderRecord,
    filters: Sequence[str],
    role: str,
    k: int | None,
    empty: pl.DataFrame | None = None,
) -> pa.Table:
    """The rows of one side; errors name the side, the filter and the reason (and the images of
    the selection that have no patches at all, ``empty``)."""
    text = ",".join(filters)
    try:
        where = parse_filters(filters, embeddings_schema(model.embedding_dim))
    except ClanetError as exc:
        raise ClanetError(f"{role} filter: {exc}") from None
    if where is None:
        raise ClanetError(f"{role} filter is empty: give at least one column=value")
    if k is not None:
        where = where & (col("rank") < k)
    rows = store.query("embeddings", model.model_id).where(where)
    table = rows.select(*KEY_COLUMNS, "embedding").to_arrow()
    if table.num_rows == 0:
        top = f" among the top {k} patches per image" if k is not None else ""
        blank = (
            f"; {empty.height} of its images have no cell patches at all (e.g. "
            f"{empty['path'][0]}): check them"
            if empty is not None and empty.height
            else ""
        )
        raise ClanetError(
            f"{store.path}: {role} filter {text!r} selects no embeddings of model "
            f"{model.model_id}{top}{blank}"
        )
    return table


@dataclass(frozen=True)
class AnomalySummary:
    """The isolation forests' verdicts on the new selection: thresholds (quantiles of the
    reference's out-of-bag maxima), counts flagged, per-sequence, per-well and per-image scores."""

    contamination: float
    detectors: list[str]
    threshold_patch: float
    threshold_image: float
    threshold_sequence: float
    n_patches_flagged: int
    n_images_flagged: int
    sequences: list[dict[str, Any]]
    wells: dict[str, float]
    images: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QCReport:
    """One ``qc`` run: its labels (the ``qc`` table's run_id, model, filters), the permutation
    test (``drift_test``) and its unit, the ``drift`` verdict (None: cannot tell), the anomaly
    summary, online drift (``window``) and the heatmap written, if any."""

    run_id: str
    model_id: str
    reference: str
    new: str
    random_init: bool
    drift_test: DriftResult
    unit: DriftUnit
    alpha: float
    drift: bool | None
    n_reference_images: int
    n_new_images: int
    anomaly: AnomalySummary
    flagged_images: list[dict[str, Any]]
    images_without_patches: list[dict[str, Any]]
    online: dict[str, Any] | None
    heatmap: str | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``qc --format json`` (the test's and the unit's fields flattened in)."""
        return {
            "run_id": self.run_id,
            "model_id": self.model_id,
            "reference": self.reference,
            "new": self.new,
            "random_init": self.random_init,
            **self.drift_test.as_dict(),
            **self.unit.as_dict(),
            "alpha": self.alpha,
            "drift": self.drift,
            "n_reference_images": self.n_reference_images,
            "n_new_images": self.n_new_images,
            "anomaly": self.anomaly.as_dict(),
            "flagged_images": self.flagged_images,
            "images_without_patches": self.images_without_patches,
            "online": self.online,
            "heatmap": self.heatmap,
        }


def run_qc(
    store_path: str | Path,
    reference_filters: Sequence[str],
    new_filters: Sequence[str],
    window: int | None = None,
    model_id: str | None = None,
    params: QCParams | None = None,
    heatmap: str | Path | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> QCReport:
    """Drift, online drift (``window`` images, if given) and anomaly scores; see the module doc."""
    params = params or QCParams()
    store = EmbeddingStore(store_path)
    model = store.encoder(model_id)
    ref = _selection(store, model, reference_filters, "reference", params.k)
    empty = images_without_patches(store, new_filters)
    new = _selection(store, model, new_filters, "new", params.k, empty)
    shared = set(ref["image_id"].to_pylist()) & set(new["image_id"].to_pylist())
    if shared:
        raise ClanetError(
            f"{store.path}: the reference and new filters share {len(shared)} image(s) "
            f"(e.g. {sorted(shared)[0]}); the two sets must be disjoint"
        )
    x, y = vectors(ref), vectors(new)
    meta = pl.from_arrow(new.select(list(KEY_COLUMNS)))
    drift, online, unit = _drift(x, y, ref, new, meta, window, params, progress)
    scores = _anomaly(store, x, ref, y, new, meta, params)
    key = [model.model_id, list(reference_filters), list(new_filters), params.k,
           params.contamination, params.n_trees, params.seed, params.quality]  # fmt: skip
    labels = {
        "run_id": short_hash(json.dumps(key)),
        "model_id": model.model_id,
        "reference": ",".join(reference_filters),
        "new": ",".join(new_filters),
    }
    _write_scores(store, scores.frame, labels, wait)
    images = _image_summary(store, scores)
    anomaly = _anomaly_summary(scores, images, params)
    if heatmap is not None:
        title = f"max image anomaly score per well ({model.model_id[:8]})"
        save_plate_heatmap(anomaly.wells, heatmap, title=title, threshold=scores.image_threshold)
    return QCReport(
        **labels,
        random_init=bool(model.random_init),
        drift_test=drift,
        unit=unit,
        alpha=params.alpha,
        drift=unit.verdict(drift.p_value < params.alpha),
        n_reference_images=len(ref["image_id"].unique()),
        n_new_images=len(new["image_id"].unique()),
        anomaly=anomaly,
        flagged_images=images.filter(pl.col("flagged")).drop("flagged").to_dicts(),
        images_without_patches=empty.to_dicts(),
        online=online,
        heatmap=str(heatmap) if heatmap is not None else None,
    )


def _anomaly_summary(scores: _Scores, images: pl.DataFrame, params: QCParams) -> AnomalySummary:
    """The anomaly part of the report; ``images``: `_image_summary`. ``wells``: the maximum
    image score per well (the heatmap's values)."""
    wells = scores.frame.group_by("well").agg(pl.col("image_score").max()).sort("well")
    return AnomalySummary(
        contamination=params.contamination,
        detectors=list(scores.detectors),
        threshold_patch=scores.patch_threshold,
        threshold_image=scores.image_threshold,
        threshold_sequence=scores.sequence_threshold,
        n_patches_flagged=int(scores.frame["patch_flagged"].sum()),
        n_images_flagged=int(images["flagged"].sum()),
        sequences=_sequence_summary(scores.frame),
        wells=dict(wells.iter_rows()),
        images=images.to_dicts(),
    )


@dataclass(frozen=True)
class DriftUnit:
    """What the permutation test exchanged, and whether that can tell drift (SPEC 11).

    field_to_field: the reference's own MMD^2 between each pair of its sequences (median, max,
    pairs), None with fewer than two; note: the plain-words caveat when the test cannot tell.
    """

    permute_by: str  # as asked: auto | image | sequence
    unit: str  # image | sequence
    n_reference_sequences: int
    n_new_sequences: int
    field_to_field: dict[str, float] | None
    note: str | None

    @property
    def can_tell(self) -> bool:
        """Only a test that exchanges whole sequences separates drift from field variation."""
        return self.unit == "sequence"

    def verdict(self, significant: bool) -> bool | None:
        """``drift``: the p-value's verdict, None when auto had too few sequences to tell."""
        return None if self.permute_by == "auto" and not self.can_tell else significant

    def as_dict(self) -> dict[str, Any]:
        return {
            "permute_by": self.permute_by,
            "unit": self.unit,
            "can_tell": self.can_tell,
            "n_reference_sequences": self.n_reference_sequences,
            "n_new_sequences": self.n_new_sequences,
            "field_to_field_mmd": self.field_to_field,
            "note": self.note,
        }


def _drift_unit(params: QCParams, ref: pa.Table, new: pa.Table) -> tuple[str, int, int]:
    """The unit to permute and the number of sequences on each side."""
    if params.permute_by not in PERMUTE_BY:
        raise ClanetError(f"permute_by must be one of {', '.join(PERMUTE_BY)}")
    n_ref = len(set(ref["sequence_id"].to_pylist()))
    n_new = len(set(new["sequence_id"].to_pylist()))
    if params.permute_by != "auto":
        return params.permute_by, n_ref, n_new
    enough = min(n_ref, n_new) >= MIN_SEQUENCES
    return ("sequence" if enough else "image"), n_ref, n_new


def field_to_field(gram: PooledGram, sequence_of: dict[Any, str]) -> dict[str, float] | None:
    """MMD^2 between every pair of reference sequences, from the gram's reference group sums
    (groups mapped to their sequence by ``sequence_of``): median, max and the number of pairs."""
    labels = [sequence_of[label] for label in gram.labels[: gram.n_x].tolist()]
    names, codes = np.unique(labels, return_inverse=True)
    if len(names) < 2:
        return None
    member = np.eye(len(names))[codes]  # (reference groups, sequences)
    sums = member.T @ gram.sums[: gram.n_x, : gram.n_x] @ member
    sizes = member.T @ gram.sizes[: gram.n_x]
    values = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            pair = np.array([a, b])
            values.append(
                float(
                    split_mmd(sums[np.ix_(pair, pair)], sizes[pair], np.array([[True, False]]))[0]
                )
            )
    return {"median": float(np.median(values)), "max": float(np.max(values)), "pairs": len(values)}


def _caveat(unit: str, n_ref: int, n_new: int) -> str | None:
    if unit == "sequence":
        return None
    return (
        f"the test permutes images, but the images of one field are a time series of the same "
        f"cells; with {n_ref} reference and {n_new} new sequence(s) (fewer than "
        f"{MIN_SEQUENCES} a side) it cannot tell drift from field-to-field variation: compare "
        "the new selection's MMD^2 with the reference's own field-to-field MMD^2"
    )


def _drift(
    x: np.ndarray,
    y: np.ndarray,
    ref: pa.Table,
    new: pa.Table,
    meta: pl.DataFrame,
    window: int | None,
    params: QCParams,
    progress: Progress | None,
) -> tuple[DriftResult, dict | None, DriftUnit]:
    """The permutation test (its unit: `_drift_unit`), the reference's field-to-field yardstick
    when the unit is the image and, with a ``window``, the online mode (image groups)."""
    unit, n_ref, n_new = _drift_unit(params, ref, new)
    if window is not None and window < 2:
        raise ClanetError(f"the online window must hold at least 2 images, got {window}")
    try:
        device = select_device(params.device)
    except ValueError as exc:
        raise ClanetError(str(exc)) from None

    def gram(column: str) -> PooledGram:
        report = as_stage(progress, f"kernel ({column})")
        groups = ref[column].to_numpy(), new[column].to_numpy()
        try:
            return pooled_gram(x, y, *groups, params.max_rows, params.seed, device=device,
                               progress=report)  # fmt: skip
        except ValueError as exc:  # e.g. a sequence on both sides with permute_by=sequence
            raise ClanetError(f"drift test over {column} groups: {exc}") from None

    main = gram(GROUP_COLUMNS[unit])
    drift = drift_test(main, params.n_permutations, params.seed)
    yardstick = None
    if unit == "image":
        images = ref["image_id"].to_pylist()
        yardstick = field_to_field(
            main, dict(zip(images, ref["sequence_id"].to_pylist(), strict=True))
        )
    found = DriftUnit(params.permute_by, unit, n_ref, n_new, yardstick, _caveat(unit, n_ref, n_new))
    if window is None:
        return drift, None, found
    images = main if unit == "image" else gram("image_id")
    return drift, _online(images, meta, window, params, progress), found


@dataclass
class _Scores:
    frame: pl.DataFrame  # KEY_COLUMNS + scores and flags, one row per new patch
    detectors: tuple[str, ...]  # the forests whose maximum is the patch score
    patch_threshold: float
    image_threshold: float
    sequence_threshold: float


def _quality(store: EmbeddingStore, table: pa.Table) -> np.ndarray:
    """Image-quality statistics (``qc.quality``) of a selection's patches, in its row order,
    read from the Zarr store in chunk order, a block at a time."""
    images = table["image_id"].unique().to_pylist()
    patches = store.query("patches").where(col("image_id").isin(images))
    located = patches.select("patch_id", "row").to_polars()
    wanted = pl.DataFrame({"patch_id": table["patch_id"].to_numpy(zero_copy_only=False)})
    rows = wanted.join(located, on="patch_id", how="left", maintain_order="left")["row"]
    if rows.null_count():
        raise ClanetError(f"{store.path}: embeddings without patch rows; run ingest again")
    rows = rows.to_numpy()
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), len(QUALITY_FEATURES)), np.float32)
    block = 8 * CHUNK
    for start in range(0, len(rows), block):
        part = order[start : start + block]
        out[part] = patch_quality(store.patch_store.read_rows(rows[part]))
    return out


def _anomaly(
    store: EmbeddingStore,
    x: np.ndarray,
    ref: pa.Table,
    y: np.ndarray,
    new: pa.Table,
    meta: pl.DataFrame,
    params: QCParams,
) -> _Scores:
    """Fit the forests on the reference, score the new patches (maximum over the forests),
    aggregate (max) and flag per level."""
    if len(x) < 4:
        raise ClanetError(f"the reference has {len(x)} patches; the anomaly model needs at least 4")
    features = {"embedding": (x, y)}
    if params.quality:
        features["quality"] = (_quality(store, ref), _quality(store, new))
    reference, scored = {}, {}
    for name, (fit_on, score) in features.items():
        forest = fit_isolation_forest(
            fit_on, params.n_trees, contamination=params.contamination, seed=params.seed
        )
        reference[name] = forest.reference_scores
        scored[name] = anomaly_scores(forest, score)
    reference_patch = np.max(list(reference.values()), axis=0)
    patch = np.max(list(scored.values()), axis=0)
    thresholds = {
        "patch": float(np.quantile(reference_patch, 1 - params.contamination)),
        **{
            level: group_threshold(reference_patch, ref[column].to_numpy(), params.contamination)
            for level, column in GROUP_COLUMNS.items()
        },
    }
    levels = {
        "patch": patch,
        **{
            level: group_max(patch, meta[column].to_numpy())
            for level, column in GROUP_COLUMNS.items()
        },
    }
    flags = {level: levels[level] > thresholds[level] for level in levels}
    for level, column in GROUP_COLUMNS.items():
        share = group_mean(flags["patch"], meta[column].to_numpy())
        flags[level] |= share >= MAJORITY_FLAGGED
    frame = meta.with_columns(
        *(pl.Series(f"{level}_score", s, pl.Float32) for level, s in levels.items()),
        *(pl.Series(f"{level}_flagged", f) for level, f in flags.items()),
        *(pl.Series(f"{name}_score", s, pl.Float32) for name, s in scored.items()),
    )
    return _Scores(
        frame, tuple(scored), thresholds["patch"], thresholds["image"], thresholds["sequence"]
    )


def _write_scores(
    store: EmbeddingStore, frame: pl.DataFrame, labels: dict[str, str], wait: bool
) -> None:
    """Replace this run's rows of the ``qc`` table; ``labels``: run_id, model_id, filters."""
    run_id = labels["run_id"]
    rows = frame.with_columns(
        qc_id=pl.col("patch_id").map_elements(lambda p: short_hash(f"{run_id}|{p}"), pl.String),
        created_at=pl.lit(datetime.now(UTC).replace(tzinfo=None)),
        **{name: pl.lit(value) for name, value in labels.items()},
    )
    with writer_lock(store.path, wait=wait):
        table = lance.open_table(store.patch_store.db, "qc", create=True)
        store.patch_store.register_table("qc")
        table.delete(col("run_id") == run_id)
        table.add(lance.to_arrow(rows.to_arrow(), "qc"))


def _image_summary(store: EmbeddingStore, scores: _Scores) -> pl.DataFrame:
    """One row per new image with its path, score (and each forest's), flag, highest first."""
    per_image = scores.frame.group_by("image_id").agg(
        pl.col("well", "location", "crop", "timepoint_h", "sequence_id").first(),
        score=pl.col("image_score").max(),
        **{f"{name}_score": pl.col(f"{name}_score").max() for name in scores.detectors},
        flagged=pl.col("image_flagged").any(),
    )
    ids = per_image["image_id"].to_list()
    images = store.query("images").where(col("image_id").isin(ids))
    paths = images.select("image_id", "path").to_polars()
    return per_image.join(paths, on="image_id", how="left").sort("score", descending=True)


def _sequence_summary(frame: pl.DataFrame) -> list[dict]:
    return (
        frame.group_by("sequence_id")
        .agg(
            pl.col(*SEQUENCE_KEYS[1:]).first(),
            score=pl.col("sequence_score").max(),
            flagged=pl.col("sequence_flagged").any(),
            n_images=pl.col("image_id").n_unique(),
        )
        .sort("score", descending=True)
        .to_dicts()
    )


def _online(
    gram: PooledGram, meta: pl.DataFrame, window: int, params: QCParams, progress: Progress | None
) -> dict:
    """Sliding windows of ``window`` images over each new sequence, in time order."""
    images = meta.unique("image_id").sort("sequence_id", "timepoint_h")
    sequences = images.partition_by("sequence_id", maintain_order=True)
    out = []
    for done, seq in enumerate(sequences, start=1):
        times = dict(zip(seq["image_id"], seq["timepoint_h"], strict=True))
        windows = sliding_windows(
            gram, seq["image_id"].to_list(), window, params.n_permutations, params.seed
        )
        rows = [
            {
                "start_h": times[w.groups[0]],
                "end_h": times[w.groups[-1]],
                "image_ids": w.groups,
                "mmd": w.mmd,
                "p_value": w.p_value,
            }
            for w in windows
        ]
        first = first_detection(windows, params.alpha)
        first_row = rows[windows.index(first)] if first is not None else None
        out.append(
            {
                **{k: seq[k][0] for k in SEQUENCE_KEYS},
                "n_images": seq.height,
                "tested": bool(windows),
                "first_drift": first_row,
                "windows": rows,
            }
        )
        if progress is not None:
            progress("online windows", done, len(sequences))
    return {
        "window": window,
        "alpha": params.alpha,
        "sequences": out,
        "n_sequences_drifted": sum(s["first_drift"] is not None for s in out),
    }
