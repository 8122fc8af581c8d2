"""``evaluate-encoder``: health and cross-batch signal of the store's encoders (SPEC 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clanet_store.cli.app import emit, format_option, main, store_option, wait_option
from clanet_store.textout import render_table

EVAL_COLUMNS = [
    "level",
    "rows",
    "cos_dist_median",
    "eff_rank",
    "collapsed",
    "knn",
    "knn_ci95",
    "knn_chance",
    "map",
    "map_ci95",
    "map_chance",
    "batch_effect",
    "group_by",
]


top_k_option = click.option(
    "--k",
    "top_k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="patches per image (CCS rank < k) averaged into the image vector",
)


def evaluation_table_row(level: str, r: dict[str, Any]) -> dict[str, Any]:
    """One level's numbers under the short column names of ``EVAL_COLUMNS``."""
    return {
        "level": level,
        "rows": r["rows"],
        "cos_dist_median": r["cosine_distance_median"],
        "eff_rank": r["effective_rank"],
        "collapsed": "YES" if r["collapsed"] else "no",
        "knn": r["knn_accuracy_cross_batch"],
        "knn_ci95": _interval(r["knn_accuracy_cross_batch_ci95"]),
        "knn_chance": r["knn_accuracy_cross_batch_chance"],
        "map": r["map_cross_batch"],
        "map_ci95": _interval(r["map_cross_batch_ci95"]),
        "map_chance": r["map_cross_batch_chance"],
        "batch_effect": r["batch_effect_index"],
        "group_by": r["group_by"],
    }


def _interval(bounds: list[float] | None) -> str:
    return "-" if bounds is None else f"{bounds[0]:.3f}-{bounds[1]:.3f}"


def encoder_banner(model: dict[str, Any], collapsed: bool) -> list[str]:
    """Warning lines for a random-init or collapsed encoder (empty otherwise)."""
    lines = []
    if model["random_init"]:
        lines.append(
            f"WARNING: model {model['model_id']} is a RANDOMLY INITIALISED encoder: its numbers "
            "say nothing about what a trained encoder would do"
        )
    if collapsed:
        lines.append(
            f"WARNING: model {model['model_id']} gives COLLAPSED embeddings: neighbours, models "
            "and QC built on them carry no information about the cells"
        )
    return lines


@main.command("evaluate-encoder")
@store_option
@click.option(
    "--model-id",
    "model_ids",
    multiple=True,
    help="encoder to evaluate (repeatable; default: every encoder of the store)",
)
@top_k_option
@click.option("--seed", type=int, default=0, show_default=True, help="query sample and pairs")
@wait_option
@format_option
def evaluate_encoder(
    store: Path, model_ids: tuple[str, ...], top_k: int, seed: int, wait: bool, fmt: str
) -> None:
    """Health, cross-batch k-NN / mAP of the cell line and batch-effect index, per level."""
    from clanet_store.pipelines.evaluate_encoder import evaluate_encoders

    evaluations = [e.as_dict() for e in evaluate_encoders(store, model_ids, top_k, seed, wait)]
    lines = []
    for r in evaluations:
        levels = [level for level in ("patch", "image", "sequence") if level in r]
        lines += [
            "",
            f"model {r['model_id']} ({r['arch']}, {r['embedding_dim']}-d, weights "
            f"{r['weights']}), images = mean of the top {r['top_k']} patches, "
            f"{r['seconds']:.1f} s",
            *encoder_banner(r, any(r[level]["collapsed"] for level in levels)),
            render_table([evaluation_table_row(level, r[level]) for level in levels], EVAL_COLUMNS),
        ]
        by_well = sorted({name for level in levels for name in r[level]["lines_by_well"]})
        if by_well:
            lines.append(
                f"lines with a single batch (other wells stand in for other batches): "
                f"{', '.join(by_well)}"
            )
    lines += [
        "",
        "knn: weighted 20-NN accuracy of the cell line, neighbours from other batches only; "
        "map: mean average precision of the same line in other batches; _chance: a random "
        "ranking (for knn, of the candidate batches); batch_effect: 0 = none, 1 = nearest "
        "same-line neighbours always from the query's batch",
    ]
    emit(fmt, {"store": str(store), "encoders": evaluations}, "\n".join(lines[1:]))
