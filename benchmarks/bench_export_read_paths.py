"""Where export-profiles' time goes (issue 23): ways to read 1 M x 1536 embeddings out of a
store's Lance table, and the cost of each step that writes them, measured in one run.

Each read runs in a fresh process (its own peak RSS) and streams the export's columns in
32,768-row batches, dropping them; ratios are against LanceDB's query reader (what
``export-profiles`` uses) in the same run:

* **query**: ``table.search().where(model_id).select(...).to_batches`` (the export's read);
* **scanner**: pylance's ``lance.dataset(uri).to_batches(columns=, batch_size=)``, with and
  without the model filter, with its read-ahead settings, and the embedding column alone;
* **format 2.0 / 2.1 / 2.2**: the first ``--copy-rows`` rows rewritten as a Lance dataset of
  that file-format version, read by the scanner (the store's tables are 2.2).

Then, per 32,768 x 1536 chunk in memory: the transpose to columns and the Parquet write.

Needs pylance (not a dependency of clanet-store): ``pip install --target DIR pylance`` and
``PYTHONPATH=DIR``. Run: ``OMP_NUM_THREADS=1 PYTHONPATH=DIR .venv/bin/python
benchmarks/bench_export_read_paths.py --store STORE`` (a store of ``bench_export_profiles.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
import lance
import pyarrow.compute as pc
from clanet_store.pipelines.encode import META_COLUMNS
from clanet_store.pipelines.export_profiles import export_profiles
from clanet_store.stores.embedding_store import EmbeddingStore
from lancedb.expr import col
store, what, model, out = sys.argv[1:5]
extra = json.loads(sys.argv[5])
columns = [*META_COLUMNS, "embedding"]
start, cpu = time.perf_counter(), time.process_time()
if what == "export":
    rows = export_profiles(store, out, "patch", "parquet").rows
elif what == "query":
    es = EmbeddingStore(store)
    table = es.table(es.encoder(model).table)
    query = table.search().where(col("model_id") == model).select(columns).limit(None)
    rows = sum(b.num_rows for b in query.to_batches(32768))
else:
    ds = lance.dataset(extra.pop("uri", f"{store}/lance/embeddings.lance"))
    if extra.pop("embedding_only", False):
        columns = ["embedding"]
    if extra.pop("filter", False):
        extra["filter"] = pc.field("model_id") == model
    batches = ds.to_batches(columns=columns, batch_size=32768, **extra)
    rows = sum(b.num_rows for b in batches)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu, "peak": peak}))
"""

# name -> (what, options); each runs on the store as built (Lance format 2.2) and, the ones in
# ON_COPY, on the same table rewritten in format 2.0.
READS = {
    "query (export's read)": ("query", {}),
    "scanner": ("scan", {}),
    "scanner + filter": ("scan", {"filter": True}),
    "scanner readahead 1": ("scan", {"batch_readahead": 1, "fragment_readahead": 1}),
    "scanner readahead 32": ("scan", {"batch_readahead": 32, "fragment_readahead": 4}),
    "scanner embedding only": ("scan", {"embedding_only": True}),
    "export parquet": ("export", {}),
}
ON_COPY = ("query (export's read)", "scanner + filter", "export parquet")


def run(store: Path, what: str, model: str, extra: dict) -> dict:
    """One read in a fresh process: rows, seconds, CPU seconds and peak RSS (bytes)."""
    out = store.parent / "export.parquet"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(store), what, model, str(out), json.dumps(extra)],
        check=True,
        capture_output=True,
        text=True,
    )
    out.unlink(missing_ok=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(name: str, m: dict, base: dict | None) -> None:
    rate, cpu_rate = m["rows"] / m["seconds"], m["rows"] / m["cpu"]
    ref = base or m
    print(f"{name:38s} {m['rows']:8d} rows {m['seconds']:6.1f} s = {rate:7.0f} rows/s "
          f"({rate / (ref['rows'] / ref['seconds']):.2f}x), {cpu_rate:7.0f} rows per CPU s "
          f"({cpu_rate / (ref['rows'] / ref['cpu']):.2f}x), peak {m['peak'] / 2**30:.2f} GB, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip


def copies(store: Path, rows: int, tmp: Path) -> dict[str, Path]:
    """The first ``rows`` rows of the embeddings table as datasets of each file version."""
    import lance

    ds = lance.dataset(store / "lance" / "embeddings.lance")
    data = ds.to_table(limit=rows)
    out = {}
    for version in ("2.0", "2.1", "2.2"):
        out[version] = tmp / f"copy{version}.lance"
        lance.write_dataset(data, out[version], data_storage_version=version)
    return out


def store_v20(store: Path) -> Path:
    """``STORE-v2.0``: the store with its embeddings table rewritten in Lance format 2.0 (the
    other tables and the patch array linked), built once and reused."""
    import lance

    copy = store.with_name(f"{store.name}-v2.0")
    if (copy / "lance" / "embeddings.lance").exists():
        return copy
    (copy / "lance").mkdir(parents=True)
    for name in ("store.json", "patches.zarr"):
        (copy / name).symlink_to(store / name)
    for table in (store / "lance").glob("*.lance"):
        if table.name != "embeddings.lance":
            (copy / "lance" / table.name).symlink_to(table)
    source = lance.dataset(store / "lance" / "embeddings.lance")
    reader = source.scanner(batch_size=32768).to_reader()
    lance.write_dataset(
        reader, copy / "lance" / "embeddings.lance", schema=source.schema,
        data_storage_version="2.0", max_rows_per_file=source.count_rows(),
    )  # fmt: skip
    return copy


def write_steps(chunks: int) -> None:
    """CPU seconds per 32,768 x 1536 chunk: the transpose, then the Parquet write of the
    columns, as ``export_profiles._ParquetWriter`` does them."""
    import numpy as np
    import polars as pl

    from clanet_store.pipelines.export_profiles import _ParquetWriter, feature_columns

    x = np.random.default_rng(0).standard_normal((32768, 1536), dtype=np.float32)
    keys = pl.DataFrame({"patch_id": [f"p{i}" for i in range(len(x))]})
    buffer = np.empty(x.shape[::-1], np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        writer = _ParquetWriter(Path(tmp) / "w.parquet", keys.to_arrow().schema, x.shape[1])
        cpu = {"transpose": 0.0, "parquet write": 0.0}
        for _ in range(chunks):
            start = time.process_time()
            feature_columns(x, buffer)
            cpu["transpose"] += time.process_time() - start
            start = time.process_time()
            writer.write(x, keys)
            cpu["parquet write"] += time.process_time() - start
        writer.close()
    cpu["parquet write"] -= cpu["transpose"]  # write() transposes too
    for step, seconds in cpu.items():
        print(f"per chunk: {step:14s} {seconds / chunks:.3f} CPU s "
              f"= {32768 * chunks / seconds:8.0f} rows per CPU s", flush=True)  # fmt: skip


def alternate(store: Path, copy: Path, model: str, rounds: int) -> None:
    """The export's read and the export on formats 2.2 and 2.0 in turn, ``rounds`` times (the
    page cache and the machine's load treat both alike); ratios against 2.2 in the same round."""
    for r in range(rounds):
        for name in ("query (export's read)", "export parquet"):
            what, extra = READS[name]
            base = run(store, what, model, dict(extra))
            show(f"round {r + 1} 2.2 {name}", base, None)
            show(f"round {r + 1} 2.0 {name}", run(copy, what, model, dict(extra)), base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--copy-rows", type=int, default=200_000)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="only the export's read and the export, on each format in turn, R times",
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    copy = store_v20(args.store)
    if args.rounds:
        alternate(args.store, copy, args.model, args.rounds)
        return
    base = None
    for store, names in ((args.store, list(READS)), (copy, ON_COPY)):
        version = "2.0" if store == copy else "2.2"
        for name in names:
            what, extra = READS[name]
            m = run(store, what, args.model, dict(extra))
            show(f"{version} {name}", m, base)
            base = base or m
    with tempfile.TemporaryDirectory(dir=args.store.parent) as tmp:
        versions = copies(args.store, args.copy_rows, Path(tmp))
        ref = None
        for version, uri in versions.items():
            m = run(args.store, "scan", args.model, {"uri": str(uri)})
            show(f"format {version} ({args.copy_rows} rows)", m, ref)
            ref = ref or m
    write_steps(args.chunks)


if __name__ == "__main__":
    main()
