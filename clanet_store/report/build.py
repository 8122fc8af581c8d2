"""``clanet-store report``: one self-contained HTML page about a store and, optionally, its models.

Sections: the dataset (lines x batches x sequences x images, time ranges, rejects); confluency
over time and imaging intervals per batch (paper Fig. 4); example images with mask and patches
(Fig. 5 / 9); every encoder of the store side by side (health, and the cross-batch k-NN, mAP and
batch-effect index of its latest ``evaluate-encoder`` run); a t-SNE of patch embeddings by
cell line and, for one line, by batch (Fig. 1 / 7); the evaluation of the given models (scores,
confusion matrices, accuracy against the part of the sequence used, Fig. 8); a cross-batch
nearest-neighbour gallery; authentication against the store's other batches (``authenticate
--evaluate``'s verdict rates and, for the first batches held out, their nearest reference
sequences as image strips); the newest QC run's plate heatmap and flagged images, if
``clanet-store qc`` was run. Sections whose inputs are missing (no embeddings yet, no model) say
so instead of failing. The t-SNE, the gallery, the models and QC open with a banner when their
encoder is a random init or collapsed (``models.health``): a number from such an encoder is not
evidence of anything.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from clanet_store import __version__
from clanet_store.errors import ClanetError
from clanet_store.models.health import MIN_EFFECTIVE_RANK, MIN_MEDIAN_DISTANCE
from clanet_store.pipelines.evaluate_encoder import HEALTH_ROWS, EncoderSummary
from clanet_store.pipelines.mil import evaluate
from clanet_store.qc.heatmap import plate_heatmap
from clanet_store.report import collect, figures, page
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.summary import store_info
from clanet_store.textout import percent_mean_std

Stage = Callable[[str], None]


@dataclass(frozen=True)
class ReportSummary:
    """What `write_report` wrote: the file, its size, sections and figures, the models and
    encoders it shows and the banners (``warnings``)."""

    report: str
    bytes: int
    sections: int
    images: int
    models: list[str]
    encoder_model_id: str | None
    encoders: list[str]
    warnings: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    encoder_notes: Sequence[str] = (),
) -> ReportSummary:
    """Write the report of ``store_path`` to ``out``; returns what it holds (sections, sizes).

    ``models``: MIL model files to evaluate (repeats of one variant are pooled); ``model_id``:
    whose embeddings to project and search (default: the latest encoder); ``k``: patches per image
    in the projection; ``exports``: where to look for the original images first (default: the
    export roots the store was ingested from); ``notes``: remarks shown at the top (e.g. why a
    model could not be evaluated); ``ssl_checkpoint``: the ssl-train checkpoint of the encoder,
    so that the evaluation says whether it saw the test side (inductive or transductive);
    ``encoder_notes``: remarks shown at the top of the Encoders section (e.g. which encoder the
    models were trained on and why). ``warnings`` in the result: the banners shown.
    """
    start = time.perf_counter()
    say = progress or (lambda _: None)
    store = EmbeddingStore(store_path)
    images = collect.ok_images(store)
    if images.is_empty():
        raise ClanetError(f"{store.path}: no ingested images to report on")
    info = store_info(store.patch_store)
    say("dataset")
    sections = [page.note(text) for text in notes] + [_dataset(info, images)]
    say("confluency and intervals")
    sections.append(_time_courses(images))
    say("example images")
    sections.append(_examples(collect.example_images(store, images, roots=exports)))
    say("encoder health")
    summaries, sequence_evals = collect.encoders(store)
    encoder = store.encoder(model_id) if summaries else None
    variants = {}
    if models:
        say("evaluating models")
        evaluations = [evaluate(store.path, path, ssl_checkpoint) for path in models]
        variants = collect.model_evaluations(evaluations)
    qc = collect.latest_qc(store)
    uses = _uses(encoder, variants, qc)
    sections.append(_encoders(store.path, summaries, sequence_evals, uses, encoder_notes))
    more, warnings = _embedding_sections(store, summaries, encoder, variants, qc, k, say)
    sections += more
    subtitle = (
        f"Store {store.path} · {info['images']} images · generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC} by clanet-store {__version__}"
    )
    html = page.document("clanet-store report", subtitle, sections)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return ReportSummary(
        report=str(out),
        bytes=out.stat().st_size,
        sections=html.count("<section "),
        images=html.count("<img "),
        models=[str(m) for m in models],
        encoder_model_id=None if encoder is None else encoder.model_id,
        encoders=list(summaries),
        warnings=warnings,
        seconds=time.perf_counter() - start,
    )


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


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _encoders(
    store_path: Path,
    summaries: dict[str, EncoderSummary],
    sequence_evals: dict[str, dict[str, Any]],
    uses: dict[str, list[str]],
    notes: Sequence[str],
) -> str:
    """Every encoder of the store side by side: what it is, its patch-level health, and its
    latest evaluate-encoder numbers at the image and sequence levels."""
    parts = [page.note(text) for text in notes]
    if not summaries:
        parts.append(page.note("No embeddings yet: run `clanet-store encode` for this section."))
        return page.section("Encoders", *parts, anchor="encoders")
    health_rows = [_health_row(model_id, s, uses) for model_id, s in summaries.items()]
    signal_rows = [
        row
        for model_id, s in summaries.items()
        for row in _signal_rows(model_id, s, sequence_evals.get(model_id))
    ]
    parts += [
        page.paragraph(
            f"Health: cosine distance of random pairs of patch embeddings (median and 1st "
            f"percentile) and the effective rank of the centred embeddings, from up to "
            f"{HEALTH_ROWS:,} patches per encoder. Collapsed when the median distance is below "
            f"{MIN_MEDIAN_DISTANCE} or the effective rank below {MIN_EFFECTIVE_RANK:g}: every "
            "patch then gets nearly the same vector and neighbours are ranked by noise."
        ),
        page.table(health_rows, HEALTH_COLUMNS, left=4),
        page.paragraph(
            "Signal across batches, from each encoder's latest `clanet-store evaluate-encoder` "
            "run: weighted 20-NN accuracy of the cell line and mean average precision of the "
            "same line, neighbours taken only from other batches (other wells for a line imaged "
            "in one batch: see grouped by), each next to what a random ranking scores; "
            "batch-effect index: how much more often than chance a query's nearest same-line "
            "neighbours come from its own batch (0: no batch effect, 1: its own batch always "
            "first). Image: mean of the image's top patches; sequence: mean of its images."
        ),
        page.table(signal_rows, SIGNAL_COLUMNS, left=4),
    ]
    parts += [
        page.note(
            f"Encoder {model_id} was never evaluated: run `clanet-store evaluate-encoder "
            f"--store {store_path} --model-id {model_id}` for its cross-batch numbers."
        )
        for model_id, s in summaries.items()
        if s.image is None
    ]
    return page.section("Encoders", *parts, anchor="encoders")


HEALTH_COLUMNS = [
    "encoder",
    "arch",
    "weights",
    "used here by",
    "random init",
    "dim",
    "patches sampled",
    "median cosine distance",
    "1st percentile",
    "effective rank",
    "collapsed",
]
SIGNAL_COLUMNS = [
    "encoder",
    "level",
    "grouped by",
    "evaluated (UTC)",
    "rows",
    "k-NN accuracy (%)",
    "chance (%)",
    "mAP",
    "chance",
    "batch-effect index",
]


def _health_row(model_id: str, s: EncoderSummary, uses: dict[str, list[str]]) -> tuple:
    """An encoder's row of the health table (`HEALTH_COLUMNS`)."""
    e, h = s.encoder, s.health
    health = (
        (
            h.rows,
            _number(h.cosine_distance_median, 4),
            _number(h.cosine_distance_p01, 4),
            _number(h.effective_rank, 1),
            "COLLAPSED" if h.collapsed else "no",
        )
        if h
        else ("-",) * 5
    )
    used = ", ".join(uses.get(model_id, [])) or "-"
    random_init = "yes" if e.random_init else "no"
    return (model_id, e.arch, e.weights, used, random_init, e.embedding_dim, *health)


def _signal_rows(
    model_id: str, s: EncoderSummary, sequence_eval: dict[str, Any] | None
) -> list[tuple]:
    """An encoder's rows of the signal table (`SIGNAL_COLUMNS`): image and sequence level, or
    one row saying it was never evaluated."""
    if s.image is None:
        return [(model_id, "-", "-", "never evaluated", *["-"] * 6)]
    return [
        (
            model_id,
            level,
            row["group_by"],
            f"{row['evaluated_at']:%Y-%m-%d %H:%M}",
            row["rows"],
            _percent(row["knn_accuracy_cross_batch"]),
            _percent(row["knn_accuracy_cross_batch_chance"]),
            _number(row["map_cross_batch"]),
            _number(row["map_cross_batch_chance"]),
            _number(row["batch_effect_index"], 2),
        )
        for level, row in (("image", s.image), ("sequence", sequence_eval))
        if row is not None
    ]


def _embedding_sections(
    store: EmbeddingStore,
    summaries: dict[str, EncoderSummary],
    encoder: EncoderRecord | None,
    variants: dict[str, Any],
    qc: dict[str, Any] | None,
    k: int,
    say: Stage,
) -> tuple[list[str], list[str]]:
    """The sections built on embeddings (projection, model evaluation, neighbours,
    authentication, QC), each under a banner when its encoder is a random init or collapsed;
    and the banners shown."""
    sections: list[str] = []
    warnings: list[str] = []

    def add(label: str, model_id: str, lead: str, build: Callable[[str | None], str]) -> None:
        """A section built on one encoder's embeddings, under a banner when it is a random
        init or collapsed (the banner also goes to ``warnings``)."""
        say(label)
        banner = _banner(summaries.get(model_id), lead)
        warnings.extend([banner] if banner else [])
        sections.append(build(banner))

    if encoder is None:
        no_embeddings = page.note("No embeddings yet: run `clanet-store encode` for this section.")
        sections.append(page.section("Patch embeddings", no_embeddings, anchor="embeddings"))
    else:
        add("t-SNE of the embeddings", encoder.model_id, "This t-SNE comes from",
            lambda banner: _projection(store, encoder, k, banner))  # fmt: skip
    if variants:
        banners = _model_banners(variants, summaries)
        warnings += banners
        sections.append(_evaluation(variants, banners))
    if encoder is not None:
        add("neighbour gallery", encoder.model_id, "These neighbours come from",
            lambda banner: _gallery(store, encoder, banner))  # fmt: skip
        add("authentication", encoder.model_id, "These verdicts come from",
            lambda banner: _authentication(store, encoder, banner))  # fmt: skip
    if qc is not None:
        add("quality control", qc["model_id"], "This QC run scored the embeddings of",
            lambda banner: _qc(qc, banner))  # fmt: skip
    return sections, warnings


def _uses(
    encoder: EncoderRecord | None,
    variants: dict[str, dict[str, Any]],
    qc: dict[str, Any] | None,
) -> dict[str, list[str]]:
    """Which sections of the report each encoder's embeddings feed."""
    uses: dict[str, list[str]] = {}
    pairs = [(m, "MIL models") for v in variants.values() for m in v["encoder_model_ids"]]
    if encoder is not None:
        mine = ("t-SNE", "neighbours", "authentication")
        pairs = [*((encoder.model_id, use) for use in mine), *pairs]
    for model_id, use in [*pairs, *([(qc["model_id"], "QC")] if qc else [])]:
        if use not in uses.setdefault(model_id, []):
            uses[model_id].append(use)
    return uses


def _banner(summary: EncoderSummary | None, what: str) -> str | None:
    """The warning for what was built on a random-init or collapsed encoder; None otherwise."""
    if summary is None:
        return None
    e, h = summary.encoder, summary.health
    reasons = ["a random init (seeded, no trained weights)"] if e.random_init else []
    if h is not None and h.collapsed:
        reasons.append(
            f"COLLAPSED (median cosine distance {h.cosine_distance_median:.4f}, effective rank "
            f"{h.effective_rank:.1f})"
        )
        outcome = "its embeddings carry no information about the cells"
    else:
        outcome = (
            "its embeddings carry no learned information about the cells (compare its k-NN "
            "with chance under Encoders)"
        )
    if not reasons:
        return None
    return f"{what} encoder {e.model_id} ({e.arch}), {' and '.join(reasons)}: {outcome}."


def _model_banners(
    variants: dict[str, dict[str, Any]], summaries: dict[str, EncoderSummary]
) -> list[str]:
    """One banner per random-init or collapsed encoder that models were trained on."""
    by_encoder: dict[str, list[str]] = {}
    for name, v in variants.items():
        for model_id in v["encoder_model_ids"]:
            by_encoder.setdefault(model_id, []).append(name)
    banners = []
    for model_id, names in by_encoder.items():
        what = f"The models {'; '.join(names)} were trained on the embeddings of"
        banner = _banner(summaries.get(model_id), what)
        banners += [banner] if banner else []
    return banners


def _encoder_note(encoder: EncoderRecord) -> str:
    return (
        f"Embeddings of encoder {encoder.model_id} ({encoder.arch}, "
        f"{encoder.embedding_dim}-d, weights {encoder.weights_source}); its health and "
        "cross-batch numbers are under Encoders."
    )


def _projection(store: EmbeddingStore, encoder: EncoderRecord, k: int, banner: str | None) -> str:
    keys, x = collect.projection_sample(store, encoder.model_id, k)
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
        *([page.banner(banner)] if banner else []),
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


def _evaluation(variants: dict[str, dict[str, Any]], banners: Sequence[str]) -> str:
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
    encoders = sorted({m for v in variants.values() for m in v["encoder_model_ids"]})
    parts = [
        *(page.banner(b) for b in banners),
        page.paragraph(
            f"Trained on the embeddings of encoder {', '.join(encoders)}. "
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


def _gallery(store: EmbeddingStore, encoder: EncoderRecord, banner: str | None) -> str:
    png, summary = collect.neighbour_gallery(store, encoder.model_id)
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
        *([page.banner(banner)] if banner else []),
        page.paragraph(_encoder_note(encoder)),
        table,
        figure,
        anchor="neighbours",
    )


def _authentication(store: EmbeddingStore, encoder: EncoderRecord, banner: str | None) -> str:
    evaluation, verdicts, strips = collect.authentication(store, encoder.model_id)
    head = [*([page.banner(banner)] if banner else []), page.paragraph(_encoder_note(encoder))]
    if isinstance(evaluation, str):
        note = page.note(f"authenticate --evaluate cannot run on this store: {evaluation}")
        return page.section("Authentication", *head, note, anchor="authentication")
    ev = evaluation.evaluation
    rates = page.table(
        (
            (name, level, r.n, _number(r.consistent), _number(r.mismatch), _number(r.unknown),
             _number(r.named_true))
            for name in ("known", "new_line", "wrong_label")
            for level, r in getattr(ev, name).items()
        ),
        ["experiment", "level", "n", "consistent", "mismatch", "unknown", "mismatch naming the "
         "true line"],
        left=2,
    )  # fmt: skip
    held = page.table(
        ((v.unit, v.claimed, v.verdict, v.line or "", _number(v.margin)) for v in verdicts),
        ["batch held out", "claimed", "verdict", "line named", "margin"],
        left=4,
    )
    parts = [
        *head,
        page.paragraph(
            f"{ev.sequences} sequences, {ev.lines} lines, {ev.units} batches; thresholds at "
            f"{ev.false_alarm:.0%} false alarms each, calibrated leave one batch out. known: "
            "each batch held out under its own label (ideal: consistent); new_line: every batch "
            "of a line removed (ideal: unknown); wrong_label: a held-out batch under every other "
            f"label (ideal: mismatch naming the true line). {ev.units_skipped} batches and "
            f"{ev.lines_skipped} lines could not be held out."
        ),
        rates,
        held,
    ]
    if strips is not None:
        parts.append(
            page.image(
                strips,
                "held-out batches and their nearest reference sequences",
                "Each row: a held-out batch (red frame: the densest patch of its first "
                "sequence's first image), then that patch of its nearest reference sequences "
                "from other batches, labelled with their batch and cosine distance.",
            )
        )
    return page.section("Authentication", *parts, anchor="authentication")


def _qc(qc: dict[str, Any], banner: str | None) -> str:
    buffer = io.BytesIO()
    title = "maximum image anomaly score per well"
    plate_heatmap(qc["wells"], title=title).save(buffer, format="PNG")
    flagged = qc["flagged"]
    parts = [
        *([page.banner(banner)] if banner else []),
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
