"""Filtered similarity search on 1 M embeddings (issue 7): IVF_RQ index vs NumPy brute force.

Synthetic part: ``--rows`` embeddings of ``--dim`` floats from a Gaussian mixture with the
structure of a cell bank: 40 cell lines of unequal size, each imaged in 6 of 60 batches (a
batch effect per (cell line, batch) pair), 8 clusters per cell line (320 in all) with a 32-d
subspace of variation each, images of 10 patches that share an image-level draw, plus isotropic
noise. They are written in chunks of 50,000 rows into a real store's embeddings table (LanceDB
on disk, one version per chunk, as ``encode`` writes), indexed with the product's
``build_index`` and queried with ``EmbeddingStore.search`` under three filters: the query's
cell line, its batch, and every other batch (the cross-batch search). Queries are held-out
patches of stored images (new draws from an image's distribution). Ground truth and baseline:
the exact top-10 by NumPy brute force (cosine) over the same filtered rows, held in memory as
unit vectors, timed in the same run. Rows are stored batch by batch, so each filter's rows are a
few contiguous slices and the baseline reads them without copies.

Real part (``--real``): ingest and encode ``../shared/data/azgcb_sample`` with the CLI (seeded
random-init ViT-S/8: no trained weights exist here) or reuse ``--real-store``, then for every patch
search the top-10 neighbours in other wells and report the precision@10 of "same cell line"
against the chance level. A measure of cross-position retrieval; no threshold.

Run: ``.venv/bin/python benchmarks/bench_search.py [--rows 1000000] [--dim 1536] [--queries 150]
[--workdir DIR] [--keep]`` (``--rows 200000`` for quick iterations; ``--reuse DIR`` searches a
directory kept by ``--keep`` again, without writing and indexing) and
``.venv/bin/python benchmarks/bench_search.py --real [--real-store DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
import torch
from lancedb.background_loop import LOOP
from lancedb.expr import Expr, col
from shared_data import AZGCB

from clanet_store.pipelines.encode import META_COLUMNS, embedding_rows
from clanet_store.pipelines.search import build_index
from clanet_store.schemas import load_schema
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import (
    HIT_COLUMNS,
    NPROBES,
    REFINE_FACTOR,
    EmbeddingStore,
    embeddings_schema,
    embeddings_table_name,
)
from clanet_store.stores.patch_store import PatchStore
from clanet_store.stores.query import vectors

K = 10
CHUNK = 50_000
PATCHES_PER_IMAGE = 10
LINES = 40
BATCHES = 60
BATCHES_PER_LINE = 6
CLUSTERS_PER_LINE = 8
RANK = 32
TIMEPOINTS = 8
LOCATIONS = 4
WELLS = [f"{r}{c}" for r in "ABCDEFGH" for c in range(1, 13)]
# Per-dimension variances: common centre 1, cell line 1, cluster 0.5, batch effect 0.09, image
# 0.3 and patch 0.2 (each spread over the cluster's 32-d subspace), isotropic noise 0.25.
CLUSTER_SD, EFFECT_SD, IMAGE_VAR, PATCH_VAR, NOISE_SD = 0.7, 0.3, 0.3, 0.2, 0.5
MODEL_ID = "synthetic-mixture"
WARMUP = 5


@dataclass
class Mixture:
    """The synthetic cell bank: groups are (cell line, batch) pairs stored batch by batch."""

    dim: int
    centre: np.ndarray  # (dim,)
    means: np.ndarray  # (clusters, dim)
    bases: np.ndarray  # (clusters, RANK, dim), unit rows
    effects: np.ndarray  # (groups, dim)
    group_line: np.ndarray  # (groups,)
    group_batch: np.ndarray  # (groups,)
    group_rows: np.ndarray  # (groups + 1,) first row of each group, then the row count
    image_group: np.ndarray  # (images,)
    image_cluster: np.ndarray  # (images,)
    image_z: np.ndarray  # (images, RANK)

    @property
    def rows(self) -> int:
        return int(self.group_rows[-1])

    def spans(self, groups: np.ndarray) -> list[tuple[int, int]]:
        """The row ranges of the selected groups (a boolean mask), adjacent ranges merged."""
        out: list[tuple[int, int]] = []
        for g in np.flatnonzero(groups):
            a, b = int(self.group_rows[g]), int(self.group_rows[g + 1])
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            elif b > a:
                out.append((a, b))
        return out

    def draw(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One new patch embedding for each of ``images`` (image ids may repeat)."""
        cluster, group = self.image_cluster[images], self.image_group[images]
        patch_sd = np.sqrt(PATCH_VAR * self.dim / RANK)
        z = (self.image_z[images] + rng.normal(0, patch_sd, (len(images), RANK))).astype(np.float32)
        x = rng.standard_normal((len(images), self.dim), dtype=np.float32) * np.float32(NOISE_SD)
        x += self.centre + self.means[cluster] + self.effects[group]
        for c in np.unique(cluster):
            rows = cluster == c
            x[rows] += z[rows] @ self.bases[c]
        return x


def make_mixture(rows: int, dim: int, seed: int = 0) -> Mixture:
    """The mixture's parameters and every image's cell line, batch, cluster and image draw."""
    rng = np.random.default_rng(seed)
    images = rows // PATCHES_PER_IMAGE
    share = rng.dirichlet(np.full(LINES, 2.0))  # unequal cell line sizes
    pairs = [
        (b, line) for line in range(LINES) for b in rng.choice(BATCHES, BATCHES_PER_LINE, False)
    ]
    pairs.sort()
    group_batch = np.array([b for b, _ in pairs])
    group_line = np.array([line for _, line in pairs])
    weight = share[group_line] * rng.uniform(0.5, 1.5, len(pairs))
    counts = rng.multinomial(images, weight / weight.sum())
    image_group = np.repeat(np.arange(len(pairs)), counts)
    clusters = LINES * CLUSTERS_PER_LINE
    line_means = rng.standard_normal((LINES, dim), dtype=np.float32)
    means = np.repeat(line_means, CLUSTERS_PER_LINE, axis=0)
    means += rng.standard_normal((clusters, dim), dtype=np.float32) * np.float32(CLUSTER_SD)
    # Random unit directions: in 1536-d they are orthogonal to within ~1 / sqrt(dim).
    bases = rng.standard_normal((clusters, RANK, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    image_cluster = group_line[image_group] * CLUSTERS_PER_LINE + rng.integers(
        CLUSTERS_PER_LINE, size=images
    )
    return Mixture(
        dim=dim,
        centre=rng.standard_normal(dim, dtype=np.float32),
        means=means,
        bases=bases,
        effects=rng.standard_normal((len(pairs), dim), dtype=np.float32) * np.float32(EFFECT_SD),
        group_line=group_line,
        group_batch=group_batch,
        group_rows=np.concatenate([[0], np.cumsum(counts)]) * PATCHES_PER_IMAGE,
        image_group=image_group,
        image_cluster=image_cluster,
        image_z=rng.normal(0, np.sqrt(IMAGE_VAR * dim / RANK), (images, RANK)),
    )


def image_keys(mix: Mixture, images: np.ndarray) -> dict[str, list]:
    """Store keys of images: cell line, batch, experiment, well, location, time point, ids.

    Within a (cell line, batch) group, images form time-lapse sequences of ``TIMEPOINTS``
    images at ``LOCATIONS`` locations per well.
    """
    group = mix.image_group[images]
    j = images - mix.group_rows[group] // PATCHES_PER_IMAGE
    seq = j // TIMEPOINTS
    lines, batches = mix.group_line[group], mix.group_batch[group]
    return {
        "image_id": [f"{i:016x}" for i in images],
        "cell_line": [f"line{v:02d}" for v in lines],
        "batch": [f"b{v:02d}" for v in batches],
        "experiment": [f"run{v:02d}" for v in batches],
        "well": [WELLS[v] for v in (seq // LOCATIONS) % len(WELLS)],
        "location": (seq % LOCATIONS + 1).tolist(),
        "crop": [None] * len(images),
        "sequence_id": [f"{g:04x}{s:012x}" for g, s in zip(group, seq, strict=True)],
        "timepoint_h": (j % TIMEPOINTS * 6.0).tolist(),
    }


def write_store(path: Path, mix: Mixture, unit_path: Path, seed: int) -> None:
    """A store with an images table, a models row and the embeddings (one version per chunk);
    the unit vectors go to ``unit_path`` (a .npy file) for the brute-force baseline.

    No patch pixels: search never reads them.
    """
    store = PatchStore(path, create=True)
    name, schema = embeddings_table_name(mix.dim), embeddings_schema(mix.dim)
    now = datetime.now(UTC).replace(tzinfo=None)
    images = np.arange(len(mix.image_group))
    keys = image_keys(mix, images)
    paths = [
        f"{c}/{b}/{c}_{w}_{lo}_{i}.jpg"
        for c, b, w, lo, i in zip(
            keys["cell_line"],
            keys["batch"],
            keys["well"],
            keys["location"],
            keys["image_id"],
            strict=True,
        )
    ]
    extra = {
        "path": paths,
        "status": ["ok"] * len(images),
        "patch_count": [PATCHES_PER_IMAGE] * len(images),
        "extractor_version": ["synthetic"] * len(images),
        "ingested_at": [now] * len(images),
    }
    columns = {**keys, **extra}
    image_schema = load_schema("images")
    store.table("images").add(
        pa.table(
            [pa.array(columns.get(f.name, [None] * len(images)), f.type) for f in image_schema],
            schema=image_schema,
        )
    )
    model = {
        "model_id": MODEL_ID,
        "arch": "gaussian-mixture",
        "img_size": 0,
        "embedding_dim": mix.dim,
        "config": "{}",
        "weights_source": "synthetic",
        "weights_format": "none",
        "random_init": True,
        "table": name,
        "created_at": now,
    }
    models = lance.open_table(store.db, "models", create=True)
    store.register_table("models")
    lance.upsert(models, lance.to_arrow([model], "models"), "model_id")
    table = lance.open_table(store.db, name, create=True, schema=schema)
    store.register_table(name)
    unit = np.lib.format.open_memmap(unit_path, "w+", np.float32, (mix.rows, mix.dim))
    for start in range(0, mix.rows, CHUNK):
        stop = min(start + CHUNK, mix.rows)
        rng = np.random.default_rng([seed, start])
        patch_images = np.arange(start, stop) // PATCHES_PER_IMAGE
        x = mix.draw(patch_images, rng)
        first = start // PATCHES_PER_IMAGE
        meta = {
            k: np.repeat(np.array(v, dtype=object), PATCHES_PER_IMAGE)
            for k, v in image_keys(mix, np.arange(first, stop // PATCHES_PER_IMAGE)).items()
        }
        meta["patch_id"] = [f"{r:016x}" for r in range(start, stop)]
        meta["rank"] = np.arange(start, stop) % PATCHES_PER_IMAGE
        meta["density"] = rng.uniform(0.3, 0.9, stop - start)
        arrow = pa.table({k: pa.array(meta[k], schema.field(k).type) for k in META_COLUMNS})
        table.add(embedding_rows(arrow, x, MODEL_ID, schema))
        unit[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit.flush()


@dataclass
class Query:
    """A held-out patch of a stored image and the filter it is searched with."""

    kind: str
    where: Expr
    spans: list[tuple[int, int]]
    vector: np.ndarray

    @property
    def filtered_rows(self) -> int:
        return sum(b - a for a, b in self.spans)


KINDS = ("cell_line = its line", "batch = its batch", "batch != its batch")


def make_queries(mix: Mixture, n: int, seed: int) -> list[Query]:
    """``n`` new patches of random stored images, the three filter kinds in turn."""
    rng = np.random.default_rng([seed, 1])
    images = rng.choice(len(mix.image_group), n, replace=False)
    drawn = mix.draw(images, rng)
    out = []
    for i, (image, vector) in enumerate(zip(images, drawn, strict=True)):
        g = mix.image_group[image]
        line, batch = mix.group_line[g], mix.group_batch[g]
        kind = KINDS[i % len(KINDS)]
        if i % len(KINDS) == 0:
            where, groups = col("cell_line") == f"line{line:02d}", mix.group_line == line
        elif i % len(KINDS) == 1:
            where, groups = col("batch") == f"b{batch:02d}", mix.group_batch == batch
        else:
            where, groups = col("batch") != f"b{batch:02d}", mix.group_batch != batch
        out.append(Query(kind, where, mix.spans(groups), vector))
    return out


def lancedb_query(
    table: Any,
    query: Query,
    nprobes: int = NPROBES,
    refine: int = REFINE_FACTOR,
    columns: Sequence[str] = (*HIT_COLUMNS, "model_id"),
) -> pa.Table:
    """The LanceDB query alone (an async table, as ``search`` sends it), by default with
    ``search``'s parameters and filter (no models lookup, no image keys): the floor
    ``EmbeddingStore.search`` adds its overhead to."""
    search = (
        table.query()
        .nearest_to(query.vector)
        .column("embedding")
        .distance_type("cosine")
        .where(query.where)
        .select([*columns, "_distance"])
        .nprobes(nprobes)
        .limit(K)
    )
    if refine:  # 0: rank by the index's codes alone
        search = search.refine_factor(refine)
    return LOOP.run(search.to_arrow())


def brute_force(
    unit: np.ndarray, spans: list[tuple[int, int]], query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-K rows by cosine among the rows in ``spans`` of a unit-vector matrix, and their
    cosine distances (the baseline and the ground truth)."""
    q = query / np.linalg.norm(query)
    sims, rows = [], []
    for a, b in spans:
        s = unit[a:b] @ q
        top = np.argpartition(s, -K)[-K:] if b - a > K else np.arange(b - a)
        sims.append(s[top])
        rows.append(top + a)
    sims, rows = np.concatenate(sims), np.concatenate(rows)
    order = np.argsort(-sims)[:K]
    return rows[order], 1 - sims[order]


def timed(calls: list[Callable[[], object]]) -> tuple[list, np.ndarray]:
    """Results and milliseconds of each call, after ``WARMUP`` untimed calls."""
    for call in calls[:WARMUP]:
        call()
    results, ms = [], []
    for call in calls:
        start = time.perf_counter()
        results.append(call())
        ms.append((time.perf_counter() - start) * 1000)
    return results, np.array(ms)


def index_sizes(table) -> tuple[int, int]:
    """Bytes of the vector index and of the scalar indexes the table's current version uses
    (files of replaced indexes stay on disk until ``index`` prunes them an hour later)."""
    root = Path(table.uri) / "_indices"
    vector = scalar = 0
    for index in table.list_indices():
        size = sum(f.stat().st_size for f in (root / index.index_uuid).rglob("*") if f.is_file())
        if index.index_type.startswith("Ivf"):
            vector += size
        else:
            scalar += size
    return vector, scalar


def machine() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {ram:.0f} GB RAM; load average "
        f"(1/5/15 min) {load}; numpy {np.__version__}, torch {torch.__version__}, "
        f"lancedb {lancedb.__version__}"
    )


def synthetic(args: argparse.Namespace, root: Path) -> None:
    """The 1 M-row part: write, index, search with filters, compare with brute force."""
    store_path, unit_path = root / "store", root / "unit.npy"
    if args.reuse:
        # The rows follow from the kept vectors; the mixture is then the one written.
        args.rows, args.dim = np.load(unit_path, mmap_mode="r").shape
    start = time.perf_counter()
    mix = make_mixture(args.rows, args.dim, args.seed)
    if args.reuse:
        print(f"data: {mix.rows:,} x {mix.dim} reused from {root} (seed {args.seed})", flush=True)
    else:
        write_store(store_path, mix, unit_path, args.seed)
        written = time.perf_counter() - start
        print(
            f"data: {mix.rows:,} x {mix.dim} float32 ({mix.rows * mix.dim * 4 / 1024**3:.1f} GB) "
            f"in {len(mix.image_group):,} images: {LINES} cell lines x {BATCHES_PER_LINE} of "
            f"{BATCHES} batches, {LINES * CLUSTERS_PER_LINE} clusters; written in {CHUNK:,}-row "
            f"chunks in {written:.0f} s",
            flush=True,
        )
        report = build_index(store_path)
        vector_bytes, scalar_bytes = index_sizes(EmbeddingStore(store_path).table(report.table))
        vector = report.vector_params
        params = (
            f"IVF_RQ cosine, {vector.get('num_partitions')} partitions, {vector.get('num_bits')} "
            "bit per dimension"
            if report.vector_index
            else "no vector index (exact)"
        )
        print(
            f"build_index: {report.seconds:.0f} s (compaction, 6 scalar indexes, {params}); "
            f"on disk: vector index {vector_bytes / 1024**2:.0f} MB, scalar indexes "
            f"{scalar_bytes / 1024**2:.0f} MB; load now {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    queries = make_queries(mix, args.queries, args.seed)
    es = EmbeddingStore(store_path)
    start = time.perf_counter()
    es.search(queries[0].vector, K, queries[0].where)
    print(
        f"first search of a new store object: {(time.perf_counter() - start) * 1000:.0f} ms "
        f"(opens the tables, reads the models table and every image's keys and path)",
        flush=True,
    )
    # Each query through search and straight to LanceDB, in turn (which goes first alternates),
    # each on its own connection, so LanceDB's caches warm alike: the machine's speed drifts
    # within minutes, and the difference is what the wrapper costs.
    db = LOOP.run(lancedb.connect_async(store_path / "lance"))
    bare = LOOP.run(db.open_table(embeddings_table_name(mix.dim)))
    lancedb_query(bare, queries[0])
    calls = []
    for i, q in enumerate(queries):
        pair = [lambda q=q: es.search(q.vector, K, q.where), lambda q=q: lancedb_query(bare, q)]
        calls += pair if i % 2 == 0 else pair[::-1]
    results, ms = timed(calls)
    at = [2 * i + i % 2 for i in range(len(queries))]  # where each search call went
    found, index_ms = [results[i] for i in at], ms[at]
    lance_ms = ms[[i + 1 - 2 * (i % 2) for i in at]]
    found_rows = [np.array([int(p, 16) for p in f["patch_id"]]) for f in found]
    unit = np.load(unit_path)  # into memory: the baseline is an in-memory brute force
    truth, brute_ms = timed([lambda q=q: brute_force(unit, q.spans, q.vector) for q in queries])
    recall = np.array(
        [len(np.intersect1d(f, t)) / K for f, (t, _) in zip(found_rows, truth, strict=True)]
    )
    rng = np.random.default_rng([args.seed, 2])
    random_distance = [
        1 - float(np.mean(unit[rng.integers(a, b, 10)] @ (q.vector / np.linalg.norm(q.vector))))
        for q in queries
        for a, b in [q.spans[rng.integers(len(q.spans))]]
    ]
    d1, d10 = np.median([d[0] for _, d in truth]), np.median([d[-1] for _, d in truth])
    print(
        f"queries: {len(queries)} held-out patches of stored images, {len(queries) // 3} per "
        f"filter, k = {K}; median cosine distance of the true 1st / 10th neighbour "
        f"{d1:.3f} / {d10:.3f}, of a random filtered row {np.median(random_distance):.3f}"
    )
    print(
        f"{'filter':<20} {'queries':>7} {'rows (median)':>13} {'recall@10':>9}   "
        f"{'index p50 / p99 ms':>18}   {'lancedb p50':>11}   {'brute p50 / p99 ms':>18}   "
        f"index / brute p50"
    )
    kinds = np.array([q.kind for q in queries])
    rows = np.array([q.filtered_rows for q in queries])
    verdicts = []
    for kind in (*KINDS, "all"):
        m = kinds == kind if kind != "all" else np.ones(len(queries), bool)
        i50, i99 = np.percentile(index_ms[m], [50, 99])
        b50, b99 = np.percentile(brute_ms[m], [50, 99])
        print(
            f"{kind:<20} {m.sum():>7} {int(np.median(rows[m])):>13,} {recall[m].mean():>9.3f}   "
            f"{i50:>8.1f} / {i99:>7.1f}   {np.median(lance_ms[m]):>11.1f}   {b50:>8.1f} / "
            f"{b99:>7.1f}   {i50 / b50:>12.3f}x"
        )
        verdicts.append((recall[m].mean() >= 0.95, i50 <= 20, i99 <= 100))
    met = ["met" if all(v) else "NOT met" for v in zip(*verdicts, strict=True)]
    print(
        f"targets (every filter): recall@10 >= 0.95 {met[0]}; median <= 20 ms {met[1]}; "
        f"p99 <= 100 ms {met[2]}"
    )


def real(store: Path | None, root: Path) -> None:
    """Precision@10 of "same cell line" among neighbours from other wells, on the real sample."""
    if store is None:
        store = root / "real-store"
        cli = Path(sys.executable).with_name("clanet-store")
        for step in (
            ["ingest", str(AZGCB), "--workers", "2"],
            ["encode", "--device", "cpu"],
            ["index"],
        ):
            start = time.perf_counter()
            subprocess.run([cli, *step, "--store", str(store)], check=True, capture_output=True)
            print(f"clanet-store {step[0]}: {time.perf_counter() - start:.0f} s", flush=True)
    es = EmbeddingStore(store)
    model = es.encoder()
    table = es.query("embeddings").select("cell_line", "batch", "well", "embedding").to_arrow()
    matrix = vectors(table)
    keys = pl.from_arrow(table.drop_columns(["embedding"]))
    print(
        f"store {store}: {keys.height} patches of {keys['cell_line'].n_unique()} cell lines in "
        f"{keys.select('batch', 'well').n_unique()} wells; model {model.arch} "
        f"({model.weights_source}, random init: {model.random_init})"
    )
    precision, ms = [], []
    for i, row in enumerate(keys.iter_rows(named=True)):
        other_wells = (col("batch") != row["batch"]) | (col("well") != row["well"])
        start = time.perf_counter()
        found = es.search(matrix[i], K, other_wells)
        ms.append((time.perf_counter() - start) * 1000)
        precision.append(float((found["cell_line"] == row["cell_line"]).mean()))
    n = keys.height
    keys = keys.with_columns(
        precision=pl.Series(precision),
        line_n=pl.len().over("cell_line"),
        well_n=pl.len().over("batch", "well"),
        well_line_n=pl.len().over("batch", "well", "cell_line"),
    ).with_columns(
        # The same-line share of the rows a query may return: what random neighbours would give.
        chance=(pl.col("line_n") - pl.col("well_line_n")) / (n - pl.col("well_n")),
        multi_well=pl.col("line_n") > pl.col("well_line_n"),
    )
    print(
        f"{n} queries (every stored patch), top-{K} from other wells, median {np.median(ms):.1f} "
        f"ms per search (exact: {n} rows is below the index threshold)"
    )
    for label, part in (
        ("all patches", keys),
        ("lines with >= 2 wells", keys.filter("multi_well")),
    ):
        print(
            f"  {label:<22} {part.height:>5} queries: precision@10 same cell line "
            f"{part['precision'].mean():.3f}, chance {part['chance'].mean():.3f}"
        )
    per_line = (
        keys.filter("multi_well")
        .group_by("cell_line")
        .agg(
            pl.len(),
            pl.col("well").n_unique().alias("wells"),
            pl.col("precision").mean(),
            pl.col("chance").mean(),
        )
        .sort("cell_line")
    )
    for r in per_line.iter_rows(named=True):
        print(
            f"    {r['cell_line']:<8} {r['wells']} wells, {r['len']:>3} patches: precision@10 "
            f"{r['precision']:.3f} (chance {r['chance']:.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where the store goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store and vectors")
    parser.add_argument(
        "--reuse", type=Path, help="search a directory kept by --keep (no write, no index build)"
    )
    parser.add_argument("--real", action="store_true", help="the real-data part instead")
    parser.add_argument("--real-store", type=Path, help="an encoded store of azgcb_sample")
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}", flush=True)
    root = args.reuse or Path(tempfile.mkdtemp(prefix="bench_search_", dir=args.workdir))
    try:
        if args.real or args.real_store:
            real(args.real_store, root)
        else:
            synthetic(args, root)
    finally:
        if args.keep or args.reuse:
            print(f"kept {root}")
        else:
            shutil.rmtree(root)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
