"""Plain-text tables, Markdown tables and JSON for command output (human-readable by default, JSON
on request)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from clanet_store.learn import metrics
from clanet_store.learn.splits import SPLIT_KINDS

# C0 and C1 control characters but the newline, and DEL: printed raw, a file name could set the
# terminal's title, move the cursor or hide text.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with control characters (newlines excepted) shown as escapes, e.g. ``\\x1b``."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def render_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned text table with a header line; numbers right-aligned."""
    rows = list(rows)
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) and bool(rows)
        for c in columns
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def percent_mean_std(mean_and_std: tuple[float, float]) -> str:
    """A (mean, std) pair of fractions as ``"12.3 ± 4.5"`` (per cent)."""
    mean, std = mean_and_std
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def to_json(payload: Any) -> str:
    """JSON text for machine-readable output (NaN becomes null)."""
    return json.dumps(_nan_to_none(payload), default=_default, indent=2, allow_nan=False)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def ablation_markdown(report: dict[str, Any]) -> str:
    """The ablation as a Markdown table: a row per variant, per split sequence- and batch-level
    accuracy and macro F1, mean ± std over repeats in % (layout of the paper's Table 4), then
    the encoder of every split: its model_id and whether it saw the test side."""
    names = ("sequence Acc", "sequence F1", "batch Acc", "batch F1")  # as metrics.SCALAR_SCORES
    head = ["Aggregation", "TSS"] + [
        f"{kind.capitalize()}: {name}" if i == 0 else name
        for kind in SPLIT_KINDS
        for i, name in enumerate(names)
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * 2 * len(names)]
    for row in report["summary"]:
        cells = [row["name"], "✓" if row["tss"] else "–"]
        cells += [
            percent_mean_std(row[kind][key])
            for kind in SPLIT_KINDS
            for key in metrics.SCALAR_SCORES
        ]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = "; ".join(
        f"{kind}: {', '.join(str(n) for n in report['test_sequences'][kind])}"
        for kind in SPLIT_KINDS
    )
    encoder = (
        f"`{report['encoder_model_id']}` ({report['encoder_arch']}, {report['embedding_dim']}-d, "
        f"{'RANDOM INIT' if report['encoder_random_init'] else report['encoder_weights']})"
    )
    how = {
        "inductive": "each split scored on an encoder refitted on its training side where "
        "anything of it is fitted",
        "transductive": "every split scored on this one encoder (--transductive)",
    }[report["protocol"]]
    per_split = [
        f"- {e['split']}: `{e['model_id']}` {e['encoder_training'].upper()} "
        f"({e['encoder_training_why']}; refitted: {e['refit']}"
        + (f"; collapsed: {e['collapsed']}" if e["collapsed"] else "")
        + ")"
        for e in report["encoders"]
    ]
    return "\n".join(
        [
            f"# MIL ablation: {report['store']}",
            "",
            f"Encoder {encoder}, protocol {report['protocol']}: {how}. {report['sequences']} "
            f"sequences, {report['batches']} batches, {len(report['classes'])} cell lines; k = "
            f"{report['k']} patches per image; {report['epochs']} epochs; {report['repeats']} "
            f"repeats per split (split and training seed = repeat number). Test side of each "
            f"split, mean ± std (population) over repeats, in %. Test sequences per repeat: "
            f"{sizes}. Encoders: {' / '.join(report['encoder_training'])} (below).",
            "",
            *lines,
            "",
            "Encoder of each split (did it see the test side?):",
            "",
            *per_split,
            "",
        ]
    )
