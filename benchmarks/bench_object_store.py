"""A store on a local S3 server against the same store on local disk: ingest and encode.

Starts moto's S3 server (``python -m moto.server``, its own process) on 127.0.0.1, copies
``--images`` real images of ../shared/data/azgcb_sample (past its 72, the same files again
under other field numbers) into a temporary export and times, in
alternating order per round (to spread machine noise over both), after an untimed warm-up of
both stages on local disk (the first run in a process loads the JIT-compiled descriptor):

* ``ingest``: `clanet_store.pipelines.ingest.ingest` with one Dask worker into a new store, in a
  temporary folder (the baseline) and under a new ``s3://`` prefix;
* ``encode``: ``encode --encoder classic`` end to end on each of those stores (`classic_encoder`
  fits its statistics on the store's patches, then `encode`), or with ``--encoder vit`` the
  seeded random-init ViT-S/8 on the CPU (`load_encoder`; a speed number only), built once.

Prints each round, the medians, the ratio s3 / local (issue 22's target: within 1.3x), the
HTTP requests the server logged per s3 stage (its request log goes to a temporary file) and the
CPU seconds the server spent on them (on the same cores as the client). The
server is moto, a Python process on the same cores: a ratio measured here bounds the cost of
going through the object-store layer (HTTP requests, no page cache) more than it predicts a real
S3 or MinIO. Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_object_store.py
[--images 12] [--rounds 2] [--encoder classic|vit]``.
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

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import AZGCB

import clanet_store
from clanet_store.pipelines.encode import classic_encoder, encode, load_encoder
from clanet_store.pipelines.ingest import ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--encoder", choices=("classic", "vit"), default="classic")
    args = parser.parse_args()
    vit = load_encoder(None, None, "cpu") if args.encoder == "vit" else None
    work = Path(tempfile.mkdtemp(prefix="bench_object_store_"))
    server_log = work / "server.log"
    server = _start_server(server_log)
    try:
        export = _export(work / "export", args.images)
        times: dict[tuple[str, str], list[float]] = {}
        requests: dict[str, list[int]] = {}
        server_cpu: dict[str, list[float]] = {}
        moto = psutil.Process(server.pid)
        warm = str(work / "warm-up")  # untimed: loads the JIT-compiled code and the imports
        ingest(export, warm, workers=1)
        encode(warm, vit or classic_encoder(warm))
        for r in range(args.rounds):
            stores = {"local": str(work / f"store{r}"), "s3": f"s3://bench/store{r}"}
            order = ["local", "s3"] if r % 2 == 0 else ["s3", "local"]
            for stage in ("ingest", "encode"):
                for where in order:
                    logged = _requests(server_log)
                    cpu = sum(moto.cpu_times()[:2])
                    start = time.perf_counter()
                    if stage == "ingest":
                        ingest(export, stores[where], workers=1)
                    else:
                        encode(stores[where], vit or classic_encoder(stores[where]))
                    times.setdefault((stage, where), []).append(time.perf_counter() - start)
                    if where == "s3":
                        cpu = sum(moto.cpu_times()[:2]) - cpu
                        server_cpu.setdefault(stage, []).append(cpu)
                        requests.setdefault(stage, []).append(_requests(server_log) - logged)
        _print(times, requests, server_cpu, args)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def _start_server(log: Path) -> subprocess.Popen:
    """moto's S3 server on a free port, logging its requests to ``log``, the AWS_* variables
    pointing at it, bucket ``bench``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:  # the child keeps its own handle
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out)
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


def _requests(log: Path) -> int:
    """Requests the server has logged so far (werkzeug: one line per request, ``"GET /..."``)."""
    time.sleep(0.2)  # let the server write the last lines
    return sum(' HTTP/1.1" ' in line for line in log.read_text().splitlines())


def _export(root: Path, n: int) -> Path:
    """``n`` real images (sorted names of azgcb_sample), copied with their folders; past the
    sample's 72, copies again under another field (``<prefix>_<well>_<location + 100 k>_...``:
    a new image to ingest, the same pixels)."""
    images = sorted(AZGCB.rglob("*.jpg"))
    for i in range(n):
        image = images[i % len(images)]
        target = root / image.relative_to(AZGCB)
        if i >= len(images):
            prefix, well, location, time_point = image.stem.rsplit("_", 3)
            location = int(location) + 100 * (i // len(images))
            target = target.with_name(f"{prefix}_{well}_{location}_{time_point}.jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    return root


def _print(
    times: dict[tuple[str, str], list[float]],
    requests: dict[str, list[int]],
    server_cpu: dict[str, list[float]],
    args: argparse.Namespace,
) -> None:
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus; load {load:.1f}")
    print(f"clanet_store from {Path(clanet_store.__file__).parent}")
    print(
        f"{args.images} images, {args.rounds} rounds, encoder {args.encoder}; "
        "server: moto (python -m moto.server)"
    )
    for stage in ("ingest", "encode"):
        medians = {}
        for where in ("local", "s3"):
            rounds = times[(stage, where)]
            medians[where] = statistics.median(rounds)
            shown = ", ".join(f"{t:.2f}" for t in rounds)
            print(f"  {stage} {where:5s}: {medians[where]:7.2f} s  (rounds: {shown})")
        ratio = medians["s3"] / medians["local"]
        print(f"  {stage}: s3 / local = {ratio:.2f}x (target <= 1.3)")
        print(f"  {stage} s3 requests per run: {', '.join(map(str, requests[stage]))}")
        cpu = statistics.median(server_cpu[stage])
        per = 1e3 * cpu / statistics.median(requests[stage])
        print(f"  {stage} s3 server CPU: {cpu:.2f} s ({per:.2f} ms per request, same cores)")


if __name__ == "__main__":
    main()
