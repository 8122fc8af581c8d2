"""Human-readable renderings of the typed results commands print (``--format table``); the JSON
is each result's ``as_dict()``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clanet_store.textout import render_table

if TYPE_CHECKING:
    from clanet_store.pipelines.evaluate_encoder import Encoder
    from clanet_store.pipelines.mil_reports import (
        AblationReport,
        EncoderTraining,
        EvalReport,
        PredictReport,
        TrainReport,
    )
    from clanet_store.pipelines.qc import QCReport

RANDOM_INIT_WARNING = "WARNING: embeddings of a RANDOMLY INITIALISED encoder: tests and demos only"
ONLINE_COLUMNS = ["batch", "well", "location", "crop", "images", "first_drift_h", "p_value"]


def qc_text(r: QCReport) -> str:
    """``qc``: the two selections, the drift test and its verdict (with the field-to-field
    yardstick when it cannot tell), the anomaly counts, then the tables of flagged images,
    images without patches and online drift."""
    a, test, unit = r.anomaly, r.drift_test, r.unit
    verdict = {True: "DRIFT", False: "no drift detected", None: "CANNOT TELL"}[r.drift]
    lines = [
        f"model {r.model_id}: reference {r.reference!r} ({test.n_reference} patches, "
        f"{r.n_reference_images} images) vs new {r.new!r} ({test.n_new} patches, "
        f"{r.n_new_images} images)",
        f"drift: MMD^2 = {test.mmd:.4g}, p = {test.p_value:.4g} ({test.n_permutations} "
        f"permutations of whole {unit.unit}s; {unit.n_reference_sequences} reference, "
        f"{unit.n_new_sequences} new sequences) -> {verdict} at alpha {r.alpha}",
        f"anomaly ({' + '.join(a.detectors)} isolation forests): {a.n_images_flagged} of "
        f"{r.n_new_images} images flagged (image threshold {a.threshold_image:.3f}), "
        f"{a.n_patches_flagged} patches flagged",
    ]
    if unit.note:
        yardstick = unit.field_to_field
        lines.insert(2, f"  note: {unit.note}")
        lines.insert(
            3,
            f"  reference field-to-field MMD^2: median {yardstick['median']:.4g}, max "
            f"{yardstick['max']:.4g} over {yardstick['pairs']} pairs; new selection {test.mmd:.4g}"
            if yardstick
            else "  reference field-to-field MMD^2: none (the reference holds one sequence)",
        )
    if r.random_init:
        lines.insert(0, RANDOM_INIT_WARNING)
    if r.flagged_images:
        columns = ["path", "well", "timepoint_h", "score", *(f"{d}_score" for d in a.detectors)]
        lines += ["", "flagged images:", render_table(r.flagged_images, columns)]
    if r.images_without_patches:
        lines += [
            "",
            f"{len(r.images_without_patches)} new images have no cell patches (the mask found "
            "no cells: blank, over-exposed or empty fields?), so they were not scored:",
            render_table(r.images_without_patches, ["path", "well", "timepoint_h"]),
        ]
    if r.online is not None:
        lines += [
            "",
            f"online drift, windows of {r.online['window']} images:",
            render_table([_online_row(s) for s in r.online["sequences"]], ONLINE_COLUMNS),
        ]
    if r.heatmap:
        lines.append(f"heatmap: {r.heatmap}")
    return "\n".join(lines)


def _online_row(sequence: dict) -> dict:
    first = sequence["first_drift"]
    return {
        "batch": sequence["batch"],
        "well": sequence["well"],
        "location": sequence["location"],
        "crop": sequence["crop"],
        "images": sequence["n_images"],
        "first_drift_h": first["end_h"] if first else None,
        "p_value": first["p_value"] if first else None,
    }


def encoder_line(e: Encoder) -> str:
    """The MIL commands' line naming the encoder (and a random init)."""
    random = " -- RANDOMLY INITIALISED encoder: demo numbers only" if e.random_init else ""
    return f"encoder {e.model_id} ({e.arch}, {e.embedding_dim}-d, weights {e.weights}){random}"


def _training_line(seen: EncoderTraining) -> str:
    return f"encoder {seen.encoder_training.upper()} for this split: {seen.encoder_training_why}"


def train_text(r: TrainReport) -> str:
    """``train``: the model, its split, encoder, last epoch and TSS."""
    c, last = r.config, r.epochs[-1]
    lines = [
        f"{r.model}: {c['aggregator']}{' + TSS' if c['tss'] else ''}, {c['epochs']} epochs on "
        f"{r.train_sequences} sequences of {len(r.classes)} cell lines "
        f"({r.test_sequences} held out for evaluate)",
        f"split {r.split} repeat {r.repeat}: {r.split_file} "
        f"({'reused' if r.split_reused else 'written'})",
        encoder_line(r.encoder),
        _training_line(r.seen),
        f"last epoch: loss {last['loss']:.4f}, training accuracy {100 * last['accuracy']:.1f} %; "
        f"bags loaded in {r.load_seconds:.1f} s, trained in {r.train_seconds:.1f} s",
    ]
    if r.sequences_outside_split:
        lines.append(f"{r.sequences_outside_split} stored sequences are not in the split file")
    if r.tss_subsampled_share is not None:
        lines.append(
            f"TSS ({c['tss_prior']['kind']} prior, candidates {r.tss_candidates} h, sigma "
            f"{r.tss_sigma:.2f}): {100 * r.tss_subsampled_share:.1f} % of bag-epochs subsampled"
        )
    return "\n".join(lines)


def evaluate_text(r: EvalReport) -> str:
    """``evaluate``: the scores, the sequence confusion matrix and the accuracy-by-fraction
    curve."""
    confusion = [
        {"true": name, **dict(zip(r.classes, row, strict=True))}
        for name, row in zip(r.classes, r.confusion, strict=True)
    ]
    scores = ", ".join(f"{key} {100 * value:.1f} %" for key, value in r.scalar_scores.items())
    return "\n".join(
        [
            f"{r.model} ({r.aggregator}{' + TSS' if r.tss else ''}) on the test side of "
            f"{r.split} repeat {r.repeat}: {r.test_sequences} sequences, "
            f"{r.test_batches} batches",
            encoder_line(r.encoder),
            _training_line(r.seen),
            scores,
            "",
            "sequence confusion (rows true, columns predicted):",
            render_table(confusion, ["true", *r.classes]),
            "",
            "accuracy against the fraction of each sequence used (paper Fig. 8):",
            render_table(r.accuracy_by_fraction, ["fraction", "natural", "reversed"]),
        ]
    )


PREDICT_COLUMNS = ["labelled", "predicted", "probability", "runner_up", "runner_up_probability"]


def predict_text(r: PredictReport) -> str:
    """``predict``: the counts, then the sequence and batch tables with their flags."""
    trained = ""
    if r.in_training:
        trained = f" ({r.in_training} sequences the model was trained on are marked TRAINED" + (
            " and counted)" if r.include_training else " and not counted)"
        )
    sequence_columns = ["batch", "position", "images", *PREDICT_COLUMNS, "flag"]
    return "\n".join(
        [
            f"{r.model}: {len(r.sequences)} sequences in {len(r.batches)} batches; "
            f"{r.mismatches} predictions differ from the label, {r.warnings} low-confidence"
            + trained,
            encoder_line(r.encoder),
            "",
            render_table(_flagged(r.sequences), sequence_columns),
            "",
            render_table(_flagged(r.batches), ["batch", "sequences", *PREDICT_COLUMNS, "flag"]),
        ]
    )


def _flagged(items: list[dict]) -> list[dict]:
    """Rows with a ``flag``: MISMATCH when the prediction is not the label, and the warning."""
    return [
        {
            **item,
            "flag": "; ".join(
                filter(
                    None,
                    [
                        "TRAINED" if item["in_training"] else None,
                        None if item["matches_label"] else "MISMATCH",
                        item["warning"],
                    ],
                )
            ),
        }
        for item in items
    ]


def ablation_text(r: AblationReport) -> str:
    """``ablation``: where the table went, then the table."""
    return f"{r.out}:\n\n{r.markdown}"
