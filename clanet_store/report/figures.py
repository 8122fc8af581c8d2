"""The report's plots (matplotlib, Agg): pure functions from frames and arrays to PNG bytes.

Every figure has a title, axis labels and units, so it can be read without the page around it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display here

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.figure import Figure

DPI = 100


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed (matplotlib keeps open figures alive)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _grid(n: int, columns: int = 4, size: tuple[float, float] = (3.6, 2.8)):
    """A figure with n small panels in rows of ``columns``; unused panels are hidden."""
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    figure, axes = plt.subplots(
        rows,
        cols,
        figsize=(size[0] * cols, size[1] * rows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return figure, axes.flat


def confluency_over_time(images: pl.DataFrame, bin_h: float = 2.0) -> bytes:
    """Confluency (%) against time per cell line, one curve per batch: mean +- std over the
    batch's sequences in ``bin_h``-hour bins (paper Fig. 4a).

    ``images``: cell_line, batch, timepoint_h, confluency (a fraction).
    """
    binned = (
        images.with_columns(
            t=(pl.col("timepoint_h") / bin_h).floor() * bin_h + bin_h / 2,
            c=pl.col("confluency") * 100,
        )
        .group_by("cell_line", "batch", "t")
        .agg(mean=pl.col("c").mean(), std=pl.col("c").std(ddof=0), n=pl.len())
        .sort("cell_line", "batch", "t")
    )
    lines = binned["cell_line"].unique().sort().to_list()
    figure, axes = _grid(len(lines))
    for ax, line in zip(axes, lines, strict=False):
        for batch, part in binned.filter(pl.col("cell_line") == line).group_by(
            "batch", maintain_order=True
        ):
            t, mean, std = (part[c].to_numpy() for c in ("t", "mean", "std"))
            ax.plot(t, mean, marker=".", label=str(batch[0]))
            ax.fill_between(t, mean - std, mean + std, alpha=0.2)
        ax.set_title(line, fontsize=10)
        ax.set_xlabel("elapsed time (h)")
        ax.set_ylabel("confluency (%)")
        ax.legend(title="batch", fontsize=7, title_fontsize=7)
    figure.suptitle(f"Confluency over time per batch (mean ± std, {bin_h:g} h bins)")
    return png(figure)


def imaging_intervals(intervals: pl.DataFrame) -> bytes:
    """Distribution of the time between consecutive images of a sequence, per batch (Fig. 4b).

    ``intervals``: cell_line, batch, interval_h.
    """
    groups = intervals.group_by("cell_line", "batch", maintain_order=True).agg("interval_h")
    groups = groups.sort("cell_line", "batch")
    labels = [f"{r['cell_line']} / {r['batch']}" for r in groups.iter_rows(named=True)]
    figure, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * max(1, len(labels))))
    if labels:
        ax.boxplot(groups["interval_h"].to_list(), orientation="horizontal", tick_labels=labels)
    ax.set_xlabel("interval between consecutive images (h)")
    ax.set_ylabel("cell line / batch")
    ax.set_title("Imaging intervals per batch")
    return png(figure)


def projection(
    xy: np.ndarray, labels: Sequence[str], title: str, legend_title: str, method: str
) -> bytes:
    """A 2-D scatter of projected embeddings, one colour per label."""
    figure, ax = plt.subplots(figsize=(7, 5.5))
    labels = np.asarray(labels)
    names = sorted(set(labels.tolist()))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, name in enumerate(names):
        mine = labels == name
        ax.scatter(xy[mine, 0], xy[mine, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=name)
    ax.set_xlabel(f"{method} 1 (arbitrary units)")
    ax.set_ylabel(f"{method} 2 (arbitrary units)")
    ax.set_title(title)
    ax.legend(
        title=legend_title, fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5)
    )
    return png(figure)


def confusion(matrix: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """A confusion matrix (rows: true, columns: predicted) with the counts written in."""
    matrix = np.asarray(matrix)
    side = 2.5 + 0.45 * len(classes)
    figure, ax = plt.subplots(figsize=(side + 1, side))
    shown = ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    high = matrix.max() if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            colour = "white" if value > high / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted cell line")
    ax.set_ylabel("true cell line")
    ax.set_title(title)
    figure.colorbar(shown, ax=ax, label="test sequences (count)", shrink=0.8)
    return png(figure)


def accuracy_by_fraction(curves: Mapping[str, Sequence[Mapping[str, float]]]) -> bytes:
    """Sequence accuracy against the fraction of each test sequence used, natural (solid) and
    reversed (dashed) order, one colour per model (paper Fig. 8).

    ``curves``: model name -> rows of fraction, natural, reversed (fractions and accuracies in
    [0, 1]).
    """
    figure, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (name, rows) in enumerate(curves.items()):
        f = [100 * r["fraction"] for r in rows]
        ax.plot(f, [100 * r["natural"] for r in rows], "-o", color=cmap(i), label=f"{name}")
        ax.plot(
            f, [100 * r["reversed"] for r in rows], "--s", color=cmap(i), label=f"{name}, reversed"
        )
    ax.set_xlabel("fraction of each test sequence used (%)")
    ax.set_ylabel("sequence accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Accuracy against the part of the sequence seen")
    ax.legend(fontsize=7)
    return png(figure)
