"""export-profiles of 1 M patch embeddings x 1536 (issue 23: >= 200,000 rows/s, peak memory
<= 4 GB).

Builds a real store with ``bench_evaluate_encoder.build_store`` (one model's synthetic
embeddings, 20 patches per image), then runs each measurement in a fresh process (so its peak
resident memory is its own, from ``getrusage``):

* **read**: the baseline, the same embeddings and keys streamed out of LanceDB in the same chunks
  and dropped (what any export pays before writing a byte);
* **parquet** / **anndata**: ``export-profiles --level patch`` end to end into a file;
* **image**: ``--level image --to parquet`` (whole sequences per chunk, rank < 10).

Rows per CPU second count the process's own CPU time (all its threads), which a loaded machine
does not inflate as it does wall time.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_export_profiles.py [--patches N]
[--rounds R] [--store DIR]`` (``--store``: build the store there once, reuse it in later runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_evaluate_encoder import DIM, MODEL_ID, build_store

CHILD = """
import json, resource, sys, time
from clanet_store.pipelines.export_profiles import CHUNK_ROWS, export_profiles
from clanet_store.pipelines.encode import META_COLUMNS
from clanet_store.stores.embedding_store import EmbeddingStore
store, out, what = sys.argv[1:4]
start, cpu = time.perf_counter(), time.process_time()
if what == "read":
    es = EmbeddingStore(store)
    table = es.table(es.encoder().table)
    query = table.search().select([*META_COLUMNS, "embedding"]).limit(None)
    rows = sum(b.num_rows for b in query.to_batches(CHUNK_ROWS))
else:
    level, fmt = what.split("-")
    rows = export_profiles(store, out, level, fmt).rows
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu, "peak": peak}))
"""


def run(store: Path, out: Path, what: str) -> dict:
    """One measurement in a fresh Python process; its rows, seconds and peak RSS (bytes)."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(store), str(out), what],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--store", type=Path, help="build the store here once and reuse it")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store"
        if not (store / "store.json").exists():
            start = time.perf_counter()
            build_store(store, args.patches)
            print(f"store with {args.patches} x {DIM} embeddings of model {MODEL_ID} built in "
                  f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        for r in range(args.rounds):
            base = cpu_base = None
            for what in ("read", "patch-parquet", "patch-anndata", "image-parquet"):
                out = Path(tmp) / f"out.{'h5ad' if what.endswith('anndata') else 'parquet'}"
                m = run(store, out, what)
                size = out.stat().st_size / 2**30 if out.exists() else 0.0
                out.unlink(missing_ok=True)
                rate, cpu_rate = m["rows"] / m["seconds"], m["rows"] / m["cpu"]
                base, cpu_base = base or rate, cpu_base or cpu_rate
                print(f"round {r + 1} {what:14s} {m['rows']:8d} rows in {m['seconds']:6.1f} s = "
                      f"{rate:7.0f} rows/s ({rate / base:.2f}x read), {cpu_rate:7.0f} rows per "
                      f"CPU s ({cpu_rate / cpu_base:.2f}x read), peak RSS "
                      f"{m['peak'] / 2**30:.2f} GB, file {size:.2f} GB, "
                      f"load {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
