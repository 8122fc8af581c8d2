"""``clanet-store report``: one self-contained HTML page about a store and, optionally, its models.

Sections: the dataset (lines x batches x sequences x images, time ranges, rejects); confluency
over time and imaging intervals per batch (paper Fig. 4); example images with mask and patches
(Fig. 5 / 9); a t-SNE of patch embeddings by cell line and, for one line, by batch (Fig. 1 / 7);
the evaluation of the given models (scores, confusion matrices, accuracy against the part of the
sequence used, Fig. 8); a cross-batch nearest-neighbour gallery; the newest QC run's plate
heatmap and flagged images, if ``clanet-store qc`` was run. Sections whose inputs are missing
(no embeddings yet, no model) say so instead of failing.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from clanet_store import __version__
from clanet_store.errors import ClanetError
from clanet_store.qc.heatmap import plate_heatmap
from clanet_store.report import collect, figures, page
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.summary import store_info
from clanet_store.textout import percent_mean_std

Stage = Callable[[str], None]


def write_report(
    store_path: str | Path,
    out: str | Path,
    models: Sequence[str | Path] = (),
    model_id: str | None = None,
    k: int = 10,
    progress: Stage | None = None,
    exports: Sequence[str | Path] = (),
    notes: Sequence[str] = (),
    ssl_checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Write the report of ``store_path`` to ``out``; returns what it holds (sections, sizes).

    ``models``: MIL model files to evaluate (repeats of one variant are pooled); ``model_id``:
    whose embeddings to project and search (default: the latest encoder); ``k``: patches per image
    in the projection; ``exports``: where to look for the original images first (default: the
    export roots the store was ingested from); ``notes``: remarks shown at the top (e.g. why a
    model could not be evaluated); ``ssl_checkpoint``: the ssl-train checkpoint of the encoder,
    so that the evaluation says whether it saw the test side (inductive or transductive).
    """
    start = time.perf_counter()
    say = progress or (lambda _: None)
    store = EmbeddingStore(store_path)
    images = collect.ok_images(store)
    if images.is_empty():
        raise ClanetError(f"{store.path}: no ingested images to report on")
    info = store_info(store)
    say("dataset")
    sections = [page.note(text) for text in notes] + [_dataset(info, images)]
    say("confluency and intervals")
    sections.append(_time_courses(images))
    say("example images")
    sections.append(_examples(collect.example_images(store, images, roots=exports)))
    encoders = store.models() if "models" in store.meta["tables"] else pl.DataFrame()
    encoder = store.model_row(model_id) if not encoders.is_empty() else None
    if encoder is None:
        sections.append(
            page.section(
                "Patch embeddings",
                page.note("No embeddings yet: run `clanet-store encode` for this section."),
                anchor="embeddings",
            )
        )
    else:
        say("t-SNE of the embeddings")
        sections.append(_projection(store, encoder, k))
    if models:
        say("evaluating models")
        sections.append(_evaluation(collect.model_evaluations(store.path, models, ssl_checkpoint)))
    if encoder is not None:
        say("neighbour gallery")
        sections.append(_gallery(store, encoder))
    qc = collect.latest_qc(store)
    if qc is not None:
        say("quality control")
        sections.append(_qc(qc))
    subtitle = (
        f"Store {store.path} · {info['images']} images · generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC} by clanet-store {__version__}"
    )
    html = page.document("clanet-store report", subtitle, sections)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return {
        "report": str(out),
        "bytes": out.stat().st_size,
        "sections": html.count("<section "),
        "images": html.count("<img "),
        "models": [str(m) for m in models],
        "encoder_model_id": None if encoder is None else encoder["model_id"],
        "seconds": time.perf_counter() - start,
    }


def _dataset(info: dict[str, Any], images: pl.DataFrame) -> str:
    per_line = collect.dataset_table(images)
    rejects = info["rejects"]
    parts = [
        page.cards(
            [
                ("cell lines", info["cell_lines"]),
                ("batches", info["batches"]),
                ("sequences", info["sequences"]),
                ("images", info["images"]),
                ("patches", info["patches"]),
                ("rejected files", info["rejected"]),
            ]
        ),
        page.table(
            per_line.select(
                "cell_line", "batches", "sequences", "images", "t_min_h", "t_max_h"
            ).iter_rows(),
            ["cell line", "batches", "sequences", "images", "first image (h)", "last image (h)"],
        ),
    ]
    if rejects:
        parts.append(page.paragraph(f"{len(rejects)} files were rejected:"))
        parts.append(page.table(((r["path"], r["reason"]) for r in rejects), ["file", "reason"]))
    return page.section("Dataset", *parts, anchor="dataset")


def _time_courses(images: pl.DataFrame) -> str:
    intervals = collect.imaging_intervals(images)
    parts = [
        page.image(
            figures.confluency_over_time(images),
            "confluency over time per batch",
            "Fraction of the image covered by the brightfield cell mask, per cell line; one curve "
            "per batch with the spread of its sequences. Batches of one line that grow apart are "
            "a first sign of a batch effect (paper Fig. 4a).",
        )
    ]
    if intervals.is_empty():
        parts.append(page.note("Every sequence has a single image: no imaging intervals."))
    else:
        parts.append(
            page.image(
                figures.imaging_intervals(intervals),
                "imaging intervals per batch",
                "Hours between consecutive images of a sequence (paper Fig. 4b). Irregular "
                "intervals are what Time-series Segment Sampling is built for.",
            )
        )
    return page.section("Growth and imaging schedule", *parts, anchor="time")


def _examples(examples: list[dict[str, Any]]) -> str:
    parts = []
    for item in examples:
        title = f"{item['cell_line']} / {item['batch']}, {item['timepoint_h']:.1f} h"
        if "error" in item:
            parts.append(page.note(f"{title}: {item['error']}"))
            continue
        parts.append(
            page.image(
                item["jpeg"],
                f"mask and patches of {item['path']}",
                f"{title}: confluency {100 * item['confluency']:.1f} %, {item['patches']} patches "
                f"(red, ranked by density); cyan: mask outline, blue: excluded overlays. "
                f"{item['path']}",
                mime="image/jpeg",
            )
        )
    return page.section(
        "Cell Cluster-level Selection on example images", page.grid(*parts), anchor="examples"
    )


def _encoder_note(encoder: dict[str, Any]) -> str:
    source = (
        "a RANDOMLY INITIALISED encoder (seeded; no trained weights): neighbours and clusters "
        "reflect simple image statistics, not learned cell morphology"
        if encoder["random_init"]
        else f"weights {encoder['weights_source']}"
    )
    return (
        f"Embeddings of encoder {encoder['model_id']} ({encoder['arch']}, "
        f"{encoder['embedding_dim']}-d) from {source}."
    )


def _projection(store: EmbeddingStore, encoder: dict[str, Any], k: int) -> str:
    keys, x = collect.projection_sample(store, encoder["model_id"], k)
    if len(keys) < 5:
        return page.section(
            "Patch embeddings",
            page.note("Fewer than 5 embeddings: nothing to project."),
            anchor="embeddings",
        )
    xy = collect.tsne(x)
    line = collect.busiest_line(keys)
    mine = (keys["cell_line"] == line).to_numpy()
    parts = [
        page.paragraph(_encoder_note(encoder)),
        page.grid(
            page.image(
                figures.projection(
                    xy,
                    keys["cell_line"].to_list(),
                    "t-SNE of patch embeddings",
                    "cell line",
                    "t-SNE",
                ),
                "t-SNE coloured by cell line",
                f"{len(keys)} patches (rank < {k}, a seeded random sample), coloured by cell line "
                "(paper Fig. 1 / 7). Separate clouds per line are what authentication needs.",
            ),
            page.image(
                figures.projection(
                    xy[mine],
                    keys["batch"].filter(keys["cell_line"] == line).to_list(),
                    f"{line}: the same projection by batch",
                    "batch",
                    "t-SNE",
                ),
                f"t-SNE of {line} coloured by batch",
                f"The patches of {line} (the line with the most batches) coloured by batch: "
                "batches that form their own islands show a batch effect.",
            ),
        ),
    ]
    return page.section("Patch embeddings", *parts, anchor="embeddings")


def _evaluation(variants: dict[str, dict[str, Any]]) -> str:
    rows = [
        (
            name,
            v["repeats"],
            ", ".join(str(n) for n in v["test_sequences"]),
            v["encoder_training"],
            *(percent_mean_std(v["scores"][key]) for key in collect.SCALAR_SCORES),
        )
        for name, v in variants.items()
    ]
    header = [
        "model",
        "repeats",
        "test sequences",
        "encoder",
        "sequence accuracy (%)",
        "sequence macro F1 (%)",
        "batch accuracy (%)",
        "batch macro F1 (%)",
    ]
    confusions = [
        page.image(
            figures.confusion(v["confusion"], v["classes"], f"{name} (test sequences)"),
            f"confusion matrix of {name}",
            f"Rows: true cell line; columns: predicted; summed over {v['repeats']} repeat(s).",
        )
        for name, v in variants.items()
    ]
    curves = page.image(
        figures.accuracy_by_fraction({n: v["accuracy_by_fraction"] for n, v in variants.items()}),
        "accuracy against the fraction of the sequence used",
        "Each test sequence cut to its first (solid) or last (dashed) 1, 25, 50, 75 and 100 % of "
        "images (paper Fig. 8); mean over repeats.",
    )
    parts = [
        page.paragraph(
            "Test side of each model's split; mean ± std (population) over repeats. Encoder: "
            "inductive when it never saw the test side's images (self-supervised training on "
            "the split's training side, or weights from elsewhere), transductive when its "
            "self-supervised training read them, unknown without its checkpoint."
        ),
        page.table(rows, header),
        page.grid(*confusions),
        curves,
    ]
    return page.section("Authentication models", *parts, anchor="evaluation")


def _gallery(store: EmbeddingStore, encoder: dict[str, Any]) -> str:
    png, summary = collect.neighbour_gallery(store, encoder["model_id"])
    if png is None:
        return page.section(
            "Nearest neighbours across batches",
            page.note("No query patch has neighbours in another batch (one batch only?)."),
            anchor="neighbours",
        )
    table = page.table(
        (
            (s["cell_line"], s["batch"], s["patch_id"], len(s["results"]), 100 * s["same_line"])
            for s in summary
        ),
        ["query cell line", "batch", "patch", "neighbours", "same cell line (%)"],
    )
    figure = page.image(
        png,
        "nearest neighbours from other batches",
        "Each row: a query patch (red frame), then its nearest patches (cosine) from other "
        "batches, labelled with line / batch, time and distance.",
    )
    return page.section(
        "Nearest neighbours across batches",
        page.paragraph(_encoder_note(encoder)),
        table,
        figure,
        anchor="neighbours",
    )


def _qc(qc: dict[str, Any]) -> str:
    buffer = io.BytesIO()
    title = "maximum image anomaly score per well"
    plate_heatmap(qc["wells"], title=title).save(buffer, format="PNG")
    flagged = qc["flagged"]
    parts = [
        page.paragraph(
            f"Newest QC run {qc['run_id']} ({qc['created_at']:%Y-%m-%d %H:%M} UTC): new images "
            f"[{qc['new']}] scored against the reference [{qc['reference']}] with an isolation "
            f"forest on the embeddings of encoder {qc['model_id']}."
        ),
        page.image(
            buffer.getvalue(),
            "plate heatmap of anomaly scores",
            "Maximum image anomaly score (0-1) per well of the new images; flagged images "
            "are listed below.",
        ),
    ]
    if flagged.is_empty():
        parts.append(page.paragraph("No image was flagged."))
    else:
        parts.append(
            page.table(
                flagged.select("well", "timepoint_h", "score", "path").head(50).iter_rows(),
                ["well", "time (h)", "anomaly score", "image"],
            )
        )
    return page.section("Quality control", *parts, anchor="qc")
