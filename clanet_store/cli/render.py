"""Human-readable renderings of the typed results commands print (``--format table``); the JSON
is each result's ``as_dict()``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clanet_store.textout import render_table

if TYPE_CHECKING:
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
