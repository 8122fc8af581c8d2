"""What the report shows, read from a store: each function returns frames, arrays and dicts
ready to plot or tabulate, so the page itself holds no queries."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from lancedb.expr import col

from clanet_store.errors import ClanetError
from clanet_store.imaging.decode import ImageDecodeError, read_grey
from clanet_store.imaging.draw import draw_gallery, render_extraction
from clanet_store.imaging.extract import extract
from clanet_store.learn.authentication import FALSE_ALARM, Verdict
from clanet_store.learn.metrics import SCALAR_SCORES, mean_std
from clanet_store.pipelines.authenticate import StoreEvaluation, evaluate_store, held_out_verdicts
from clanet_store.pipelines.evaluate_encoder import (
    EncoderSummary,
    encoder_summaries,
    latest_evaluations,
)
from clanet_store.pipelines.mil_reports import EvalReport
from clanet_store.pipelines.search import gallery_row
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.query import vectors

# t-SNE of more points than this takes minutes on 2 cores and draws an unreadable blob.
PROJECTION_POINTS = 2000
EXAMPLE_WIDTH = 900  # px: the drawings are shown about half this wide


def ok_images(store: EmbeddingStore) -> pl.DataFrame:
    """The ingested (status ok) images with their keys, time and confluency."""
    columns = ["image_id", "path", "cell_line", "batch", "sequence_id", "timepoint_h"]
    images = store.query("images").where(col("status") == "ok")
    return images.select(*columns, "confluency").to_polars()


def imaging_intervals(images: pl.DataFrame) -> pl.DataFrame:
    """Hours between consecutive images of each sequence: cell_line, batch, interval_h."""
    return (
        images.sort("sequence_id", "timepoint_h")
        .with_columns(interval_h=pl.col("timepoint_h").diff().over("sequence_id"))
        .drop_nulls("interval_h")
        .select("cell_line", "batch", "interval_h")
    )


def dataset_table(images: pl.DataFrame) -> pl.DataFrame:
    """Per cell line: batches, sequences, images and the time range covered."""
    return (
        images.group_by("cell_line")
        .agg(
            batches=pl.col("batch").n_unique(),
            sequences=pl.col("sequence_id").n_unique(),
            images=pl.len(),
            t_min_h=pl.col("timepoint_h").min(),
            t_max_h=pl.col("timepoint_h").max(),
        )
        .sort("cell_line")
    )


def example_images(
    store: EmbeddingStore, images: pl.DataFrame, n: int = 4, roots: Sequence[str | Path] = ()
) -> list[dict[str, Any]]:
    """Mask outline and selected patches drawn on up to ``n`` images of different cell lines
    (the middle time point of each line's first sequence), as JPEG bytes (paper Fig. 5 / 9).

    The files are looked up under ``roots``, then the store's export roots; images whose file is
    gone or unreadable are listed with the reason instead of a picture.
    """
    picks = (
        images.sort("cell_line", "sequence_id", "timepoint_h")
        .group_by("cell_line", maintain_order=True)
        .agg(pl.col("path", "timepoint_h", "batch").gather(pl.len() // 2))
        .explode("path", "timepoint_h", "batch")
        .head(n)
    )
    examples = []
    for row in picks.iter_rows(named=True):
        item = {key: row[key] for key in ("cell_line", "batch", "timepoint_h", "path")}
        source = store.patch_store.source_file(row["path"], roots)
        if source is None:
            examples.append({**item, "error": "the original file is not under any export root"})
            continue
        try:
            grey = read_grey(source)
        except (ImageDecodeError, OSError) as exc:
            examples.append({**item, "error": str(exc)})
            continue
        extraction = extract(grey)
        picture = render_extraction(grey, extraction)
        picture.thumbnail((EXAMPLE_WIDTH, EXAMPLE_WIDTH))  # full size would make a 10 MB page
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=88)
        examples.append(
            {
                **item,
                "jpeg": buffer.getvalue(),
                "confluency": extraction.confluency,
                "patches": len(extraction.boxes),
            }
        )
    return examples


def encoders(
    store: EmbeddingStore,
) -> tuple[dict[str, EncoderSummary], dict[str, dict[str, Any]]]:
    """Every encoder of the store, oldest first, by model id: its patch-level health (from a
    sample, computed here once per report) and latest image-level evaluation
    (`encoder_summaries`); and the latest sequence-level evaluation rows by model id."""
    if "models" not in store.patch_store.meta["tables"]:
        return {}, {}
    summaries = {s.encoder.model_id: s for s in encoder_summaries(store)}
    latest = latest_evaluations(store).filter(pl.col("level") == "sequence")
    return summaries, {r["model_id"]: r for r in latest.iter_rows(named=True)}


def projection_sample(
    store: EmbeddingStore, model_id: str, k: int, points: int = PROJECTION_POINTS, seed: int = 0
) -> tuple[pl.DataFrame, np.ndarray]:
    """Up to ``points`` embeddings of patches with rank < k, drawn at random with ``seed``:
    their keys and their vectors (rows aligned)."""
    rows = store.query("embeddings", model_id).where(col("rank") < k)
    table = rows.select("patch_id", "cell_line", "batch", "embedding").to_arrow()
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(table.num_rows, min(points, table.num_rows), replace=False))
    sample = table.take(take)
    return pl.from_arrow(sample.drop_columns(["embedding"])), vectors(sample)


def tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the rows of ``x`` with cosine distances (the search metric)."""
    from sklearn.manifold import TSNE  # imported here: scikit-learn is slow to import

    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    model = TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return model.fit_transform(x.astype(np.float64))


def busiest_line(keys: pl.DataFrame) -> str:
    """The cell line with the most batches (ties: the most patches), to show batch effects."""
    counts = keys.group_by("cell_line").agg(batches=pl.col("batch").n_unique(), n=pl.len())
    return counts.sort(["batches", "n", "cell_line"], descending=[True, True, False])["cell_line"][
        0
    ]


def neighbour_gallery(
    store: EmbeddingStore, model_id: str, queries: int = 3, k: int = 6, seed: int = 0
) -> tuple[bytes | None, list[dict[str, Any]]]:
    """Nearest neighbours from *other* batches of a few query patches (rank 0 patches of
    different cell lines, picked with ``seed``): the gallery PNG and, per query, its neighbours
    and the share of them of the same cell line."""
    rows = store.query("embeddings", model_id).where(col("rank") == 0)
    keys = rows.select("patch_id", "cell_line", "batch").to_polars()
    if keys.is_empty():
        return None, []
    picks = keys.sample(fraction=1.0, shuffle=True, seed=seed).unique("cell_line", keep="first")
    rows, summary = [], []
    for query in picks.sort("cell_line").head(queries).iter_rows(named=True):
        found = store.search(query["patch_id"], k, None, model_id, other_batches=True)
        if found.is_empty():
            continue
        pixels = store.patch_store.pixels([query["patch_id"]])[0]
        rows.append(gallery_row(store, query, pixels, found))
        same = float((found["cell_line"] == query["cell_line"]).mean())
        results = found.select("patch_id", "cell_line", "batch", "distance").to_dicts()
        summary.append({**query, "same_line": same, "results": results})
    if not rows:
        return None, []
    buffer = io.BytesIO()
    draw_gallery(rows, buffer)
    return buffer.getvalue(), summary


def latest_qc(store: EmbeddingStore) -> dict[str, Any] | None:
    """The newest ``qc`` run of the store (see ``clanet-store qc``): its filters, the maximum
    image score per well, and the flagged images with their paths; None without QC runs."""
    if "qc" not in store.patch_store.meta["tables"]:
        return None
    frame = store.query("qc").to_polars()
    if frame.is_empty():
        return None
    newest = frame.sort("created_at").row(-1, named=True)
    run = frame.filter(pl.col("run_id") == newest["run_id"])
    wells = dict(run.group_by("well").agg(pl.col("image_score").max()).iter_rows())
    paths = store.query("images").select("image_id", "path").to_polars()
    flagged = (
        run.filter(pl.col("image_flagged"))
        .group_by("image_id")
        .agg(pl.col("well", "timepoint_h").first(), score=pl.col("image_score").max())
        .join(paths, on="image_id", how="left")
        .sort("score", descending=True)
    )
    keep = ("run_id", "model_id", "reference", "new", "created_at")
    return {**{k: newest[k] for k in keep}, "wells": wells, "flagged": flagged}


def model_evaluations(evaluations: Sequence[EvalReport]) -> dict[str, dict[str, Any]]:
    """Group the evaluations (`pipelines.mil.evaluate`) of the repeats of one variant
    (aggregator + TSS + split): per variant the mean +- std of the scores, the confusion matrix
    summed over repeats, the mean accuracy-by-fraction curves, the encoders the repeats were
    trained on and whether they saw the test side."""
    runs: dict[str, list[EvalReport]] = defaultdict(list)
    for result in evaluations:
        runs[f"{result.aggregator}{' + TSS' if result.tss else ''}, {result.split}"].append(result)
    variants = {}
    for name, results in runs.items():
        curves = [
            {
                "fraction": row["fraction"],
                **{
                    order: float(np.mean([r.accuracy_by_fraction[i][order] for r in results]))
                    for order in ("natural", "reversed")
                },
            }
            for i, row in enumerate(results[0].accuracy_by_fraction)
        ]
        variants[name] = {
            "repeats": len(results),
            "models": [r.model for r in results],
            "test_sequences": [r.test_sequences for r in results],
            "classes": results[0].classes,
            "scores": mean_std([r.scalar_scores for r in results], SCALAR_SCORES),
            "confusion": np.sum([r.confusion for r in results], axis=0),
            "accuracy_by_fraction": curves,
            "encoder_model_ids": sorted({r.encoder.model_id for r in results}),
            "encoder_training": " / ".join(sorted({r.seen.encoder_training for r in results})),
        }
    return variants


def authentication(
    store: EmbeddingStore, model_id: str, batches: int = 8, false_alarm: float = FALSE_ALARM
) -> tuple[StoreEvaluation | str, list[Verdict], bytes | None]:
    """``authenticate --evaluate`` on the whole store (or the one-line reason it cannot run),
    the leave-one-batch-out verdicts of the first ``batches`` batches, and their strips: per
    batch, the rank-0 patch of its first sequence's first image, then that patch of each
    nearest reference sequence's first image."""
    try:
        evaluation: StoreEvaluation | str = evaluate_store(
            store.path, model_id=model_id, false_alarm=false_alarm
        )
        verdicts, sequences = held_out_verdicts(store.path, model_id, batches, false_alarm)
    except ClanetError as exc:
        return str(exc), [], None
    first_image = dict(sequences.iter_rows())
    wanted = [[first_image[v.sequences[0]], *(n.image_id for n in v.nearest)] for v in verdicts]
    ids = sorted({i for row in wanted for i in row})
    firsts = store.query("patches").where((col("rank") == 0) & col("image_id").isin(ids))
    patch_of = dict(firsts.select("image_id", "patch_id").to_polars().iter_rows())
    rows = []
    for v, images in zip(verdicts, wanted, strict=True):
        if not all(i in patch_of for i in images):
            continue
        pixels = store.patch_store.pixels([patch_of[i] for i in images])
        labels = [f"{v.unit}\nclaimed {v.claimed}: {v.verdict}"] + [
            f"{n.unit}\nd={n.distance:.3f}" for n in v.nearest
        ]
        rows.append(list(zip(pixels, labels, strict=True)))
    if not rows:
        return evaluation, verdicts, None
    buffer = io.BytesIO()
    draw_gallery(rows, buffer)
    return evaluation, verdicts, buffer.getvalue()
