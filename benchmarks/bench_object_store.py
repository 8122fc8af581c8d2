"""A store on a local S3 server against the same store on local disk: ingest and encode.

Starts moto's S3 server (``python -m moto.server``, its own process) on 127.0.0.1, copies
``--images`` real images of ../shared/data/azgcb_sample into a temporary export and times, in
alternating order per round (to spread machine noise over both):

* ``ingest``: `clanet_store.pipelines.ingest.ingest` with one Dask worker into a new store, in a
  temporary folder (the baseline) and under a new ``s3://`` prefix;
* ``encode``: ``encode --encoder classic`` end to end on each of those stores (`classic_encoder`
  fits its statistics on the store's patches, then `encode`).

Prints each round, the medians and the ratio s3 / local (issue 22's target: within 1.3x). The
server is moto, a Python process on the same cores: a ratio measured here bounds the cost of
going through the object-store layer (HTTP requests, no page cache) more than it predicts a real
S3 or MinIO. Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_object_store.py
[--images 12] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import AZGCB

from clanet_store.pipelines.encode import classic_encoder, encode
from clanet_store.pipelines.ingest import ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_object_store_"))
    server = _start_server()
    try:
        export = _export(work / "export", args.images)
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            stores = {"local": str(work / f"store{r}"), "s3": f"s3://bench/store{r}"}
            order = ["local", "s3"] if r % 2 == 0 else ["s3", "local"]
            for where in order:
                start = time.perf_counter()
                ingest(export, stores[where], workers=1)
                times.setdefault(("ingest", where), []).append(time.perf_counter() - start)
            for where in order:
                start = time.perf_counter()
                encode(stores[where], classic_encoder(stores[where]))
                times.setdefault(("encode", where), []).append(time.perf_counter() - start)
        _print(times, args)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def _start_server() -> subprocess.Popen:
    """moto's S3 server on a free port, the AWS_* variables pointing at it, bucket ``bench``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_ALLOW_HTTP="true",
    )
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for _ in range(300):  # until the server answers (its start-up takes a few seconds)
        try:
            client.create_bucket(Bucket="bench")
            break
        except Exception:
            time.sleep(0.2)
    else:
        raise SystemExit("moto server did not start")
    return server


def _export(root: Path, n: int) -> Path:
    """``n`` real images (sorted names of azgcb_sample), copied with their folders."""
    images = sorted(AZGCB.rglob("*.jpg"))[:n]
    for image in images:
        target = root / image.relative_to(AZGCB)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    return root


def _print(times: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus; load {load:.1f}")
    print(f"{args.images} images, {args.rounds} rounds; server: moto (python -m moto.server)")
    for stage in ("ingest", "encode"):
        medians = {}
        for where in ("local", "s3"):
            rounds = times[(stage, where)]
            medians[where] = statistics.median(rounds)
            shown = ", ".join(f"{t:.2f}" for t in rounds)
            print(f"  {stage} {where:5s}: {medians[where]:7.2f} s  (rounds: {shown})")
        ratio = medians["s3"] / medians["local"]
        print(f"  {stage}: s3 / local = {ratio:.2f}x (target <= 1.3)")


if __name__ == "__main__":
    main()
