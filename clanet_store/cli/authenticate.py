"""The ``authenticate`` command: is a flask the line on its label, judged against the library?"""

from __future__ import annotations

from pathlib import Path

import click

from clanet_store.cli.app import emit, format_option, main, store_option, wait_option
from clanet_store.pipelines.authenticate import FALSE_ALARM, TOP_M  # its defaults
from clanet_store.textout import render_table

FILTER_HELP = "typed filter on the sequence table, e.g. cell_line=A549,batch=b2 (repeatable)"


@main.command()
@store_option
@click.option("--new", "new", multiple=True, help=f"the sequences to judge: {FILTER_HELP}")
@click.option("--claimed", help="the line the new sequences are labelled as")
@click.option(
    "--claimed-from-labels", is_flag=True, help="each new sequence claims its stored cell line"
)
@click.option(
    "--reference", multiple=True, help=f"the library (default: all but --new): {FILTER_HELP}"
)
@click.option("--model-id", help="which encoder's sequence vectors (default: the latest)")
@click.option(
    "--mil",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="pool each sequence with this trained MIL model's bag vector (its own encoder)",
)
@click.option("--allow-new-line", is_flag=True, help="accept a claimed line the library lacks")
@click.option(
    "--evaluate", is_flag=True, help="measure the verdicts on the library instead (no --new)"
)
@click.option(
    "--false-alarm",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=FALSE_ALARM,
    show_default=True,
    help="false-alarm rate each threshold is calibrated to",
)
@click.option("--top-m", type=click.IntRange(min=1), default=TOP_M, show_default=True)
@wait_option
@format_option
def authenticate(
    store: Path,
    new: tuple[str, ...],
    claimed: str | None,
    claimed_from_labels: bool,
    reference: tuple[str, ...],
    model_id: str | None,
    mil: Path | None,
    allow_new_line: bool,
    evaluate: bool,
    false_alarm: float,
    top_m: int,
    wait: bool,
    fmt: str,
) -> None:
    """Judge new sequences against a reference library: consistent / mismatch / unknown."""
    from clanet_store.pipelines.authenticate import authenticate_store, evaluate_store

    if evaluate:
        if new or claimed or claimed_from_labels:
            raise click.UsageError("--evaluate judges the library itself: drop --new / --claimed")
        r = evaluate_store(store, reference, model_id, false_alarm, top_m, wait, mil)
        emit(fmt, r.as_dict(), _evaluation_text(r.as_dict()))
        return
    if (claimed is None) == (not claimed_from_labels):
        raise click.UsageError("give exactly one of --claimed LINE and --claimed-from-labels")
    r = authenticate_store(
        store, new, claimed, reference, model_id, allow_new_line, false_alarm, top_m, wait, mil
    )
    emit(fmt, r.as_dict(), _authentication_text(r.as_dict()))


def _encoder_line(r: dict) -> str:
    encoder = r["encoder"]
    warning = " RANDOM INIT: verdicts carry no evidence" if encoder["random_init"] else ""
    return (
        f"model {encoder['model_id']} ({encoder['arch']}, {encoder['embedding_dim']}-d, "
        f"weights {encoder['weights']}), sequences pooled by {r['pooling']}{warning}"
    )


def _authentication_text(r: dict) -> str:
    cal = r["calibration"]
    lines = [
        _encoder_line(r),
        f"library: {r['reference_sequences']} sequences, {cal['lines']} lines, {cal['units']} "
        f"batches; thresholds at {cal['false_alarm']:.0%} false alarms (leave one batch out, "
        f"{cal['genuine_scores']} sequences): unknown below {cal['unknown_threshold']:.3f}, "
        f"mismatch below a margin of {cal['margin_threshold']:.3f}",
        "",
    ]
    columns = ["unit", "claimed", "verdict", "line", "margin", "best_score", "sequences", "reason"]
    rows = [{**b, "sequences": len(b["sequences"])} for b in r["batches"]]
    lines.append(render_table(rows, columns))
    for batch in r["batches"]:
        top = ", ".join(f"{s['line']} {s['score']:.3f}" for s in batch["top_lines"])
        lines += ["", f"{batch['unit']}: top lines {top}; nearest reference sequences:"]
        lines.append(render_table(batch["nearest"], ["line", "unit", "distance", "path"]))
    return "\n".join(lines)


def _evaluation_text(r: dict) -> str:
    rows = [
        {"experiment": name, "level": level, **rates}
        for name in ("known", "new_line", "wrong_label")
        for level, rates in r[name].items()
    ]
    health = r["health"]
    state = "no health sample" if health is None else f"collapsed: {health['collapsed']}"
    return "\n".join(
        [
            f"{_encoder_line(r)}; {state}",
            f"{r['sequences']} sequences, {r['lines']} lines, {r['units']} batches; "
            f"false-alarm rate {r['false_alarm']:.0%} per threshold, top {r['top_m']}; "
            f"{r['units_skipped']} batches and {r['lines_skipped']} lines could not be held out",
            "",
            render_table(rows, ["experiment", "level", "n", *_RATES]),
            "",
            "known: each batch held out under its own label (ideal: consistent); new_line: every "
            "batch of a line removed (ideal: unknown); wrong_label: a held-out batch under every "
            "other label (ideal: mismatch naming the true line, named_true)",
        ]
    )


_RATES = ["consistent", "mismatch", "unknown", "named_true"]
