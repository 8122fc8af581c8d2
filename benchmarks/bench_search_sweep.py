"""Query-time settings of the vector index, swept on a store kept by ``bench_search.py --keep``.

For each setting (partitions probed, re-ranking factor, result columns fetched) the 150 queries
of ``bench_search.py`` go straight to LanceDB (async API, as ``EmbeddingStore.search`` sends
them), the settings in turn for every query, which one first rotating, so that the machine's
drift and LanceDB's caches fall on all alike. Prints recall@10 against the exact top-10 (NumPy
brute force over the filtered rows) and the median latency, per filter. This is how
``NPROBES``, ``REFINE_FACTOR`` and the fetched columns of ``embedding_store`` were chosen.

Run: ``.venv/bin/python benchmarks/bench_search_sweep.py DIR [--nprobes 2,4,8]
[--refine 0,5,10,20] [--columns 1,4]`` (DIR: the directory ``--keep`` printed).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from lancedb import connect_async
from lancedb.background_loop import LOOP

# bench_search is a script beside this one, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import (
    KINDS,
    brute_force,
    lancedb_query,
    machine,
    make_mixture,
    make_queries,
    timed,
)

from clanet_store.stores.embedding_store import HIT_COLUMNS, embeddings_table_name

# Fetched columns by count: 1 = the patch id alone, 4 = what search fetches, 9 = every result
# column, as search fetched them before the image keys came from the images table.
COLUMNS = {
    1: ("patch_id",),
    4: (*HIT_COLUMNS, "model_id"),
    9: (*HIT_COLUMNS, "model_id", "cell_line", "batch", "well", "location", "timepoint_h"),
}


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a directory kept by bench_search.py --keep")
    parser.add_argument("--nprobes", type=ints, default=[8])
    parser.add_argument("--refine", type=ints, default=[10])
    parser.add_argument("--columns", type=ints, default=[4], help=f"of {sorted(COLUMNS)}")
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}", flush=True)
    unit = np.load(args.root / "unit.npy")
    queries = make_queries(make_mixture(*unit.shape, args.seed), args.queries, args.seed)
    truth = [brute_force(unit, q.spans, q.vector)[0] for q in queries]
    del unit
    db = LOOP.run(connect_async(args.root / "store" / "lance"))
    table = LOOP.run(db.open_table(embeddings_table_name(queries[0].vector.size)))
    indexes = LOOP.run(table.list_indices())
    vector = [i.index_type for i in indexes if i.index_type.startswith("Ivf")]
    print(f"vector index: {', '.join(vector) or 'none (exact search)'}", flush=True)
    settings = list(itertools.product(args.nprobes, args.refine, args.columns))
    # (query, setting) in the order run: every query under every setting, the first rotating.
    at = [(i, (i + j) % len(settings)) for i in range(len(queries)) for j in range(len(settings))]

    def run(i: int, s: int):
        nprobes, refine, ncols = settings[s]
        return lancedb_query(table, queries[i], nprobes, refine, COLUMNS[ncols])

    results, ms = timed([lambda i=i, s=s: run(i, s) for i, s in at])
    kinds = np.array([q.kind for q in queries])
    print(f"{'nprobes':>7} {'refine':>6} {'columns':>7}   recall@10 / median ms per filter")
    for s, (nprobes, refine, ncols) in enumerate(settings):
        mine = [n for n, (_, t) in enumerate(at) if t == s]
        found = [results[n] for n in mine]
        rec = np.array(
            [
                len(np.intersect1d([int(p, 16) for p in f["patch_id"].to_pylist()], truth[i])) / 10
                for f, i in zip(found, (at[n][0] for n in mine), strict=True)
            ]
        )
        lat = ms[mine]
        parts = "  ".join(
            f"{k}: {rec[kinds == k].mean():.3f} / {np.median(lat[kinds == k]):.1f}" for k in KINDS
        )
        overall = f"all: {rec.mean():.3f} / {np.median(lat):.1f}"
        print(f"{nprobes:>7} {refine:>6} {ncols:>7}   {overall}   {parts}", flush=True)


if __name__ == "__main__":
    main()
