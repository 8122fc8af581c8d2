"""Stores on object storage (issue 22), against a real S3 server: moto's server mode on
127.0.0.1, started here. ingest + encode (on a Dask worker) + search + info, and train, on
``s3://bucket/prefix`` give what they give on a local store; a wrong endpoint, wrong credentials
or a missing bucket fail in one line naming the URL with nothing written; the writer lease
refuses a second writer while it is live and lets one in after it expired; ``kill -9`` of an
``s3://`` encode, then a re-run, leaves one row per patch."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import obstore
import polars as pl
import pytest
from click.testing import CliRunner
from dask_processes import free_port
from test_encode import SEED7, kill_and_resume

from clanet_store.cli import main
from clanet_store.errors import ClanetError
from clanet_store.exports.synth import synth_export
from clanet_store.pipelines.encode import classic_encoder, encode
from clanet_store.pipelines.ingest import ingest
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.lock import LEASE, StoreBusyError, writer_lock
from clanet_store.stores.query import vectors

BIN = Path(sys.executable).parent
IMAGES = ("A431/A431_B1_1_00d00h00m.jpg", "HCC 2279/HCC 2279_G7_1_06d04h00m.jpg")
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with the bucket ``clanet``; the AWS_* variables point at
    it for this module (and the processes it starts)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**KEYS, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_REGION": "us-east-1"}
    env["AWS_ALLOW_HTTP"] = "true"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        _make_bucket(env, "clanet")
        yield env
    server.stop()


def _make_bucket(env: dict, bucket: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)


def _ok(args: list[str]) -> dict:
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _fails(args: list[str]) -> str:
    """Run a command that must fail: exit code 1 and one line on stderr (no traceback)."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("export")
    for rel in IMAGES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "azgcb_sample" / rel, root / rel)
    return root


@pytest.fixture(scope="module")
def stores(s3, export, tmp_path_factory) -> tuple[str, str]:
    """The same export ingested into a local store and into one on the S3 server."""
    local = str(tmp_path_factory.mktemp("local") / "store")
    remote = "s3://clanet/ingested/store"
    for store in (local, remote):
        _ok(["ingest", str(export), "--store", store, "--workers", "1"])
    return local, remote


@pytest.mark.realdata
def test_ingest_encode_search_on_s3_equal_a_local_store(stores):
    local, remote = stores
    command = ["encode", "--encoder", "classic", "--store"]
    # On s3:// the encoder runs on a Dask worker, which reads the pixels from the bucket.
    reports = {local: _ok([*command, local]), remote: _ok([*command, remote, "--workers", "1"])}
    assert reports[remote]["workers"] == 1
    assert reports[remote]["model_id"] == reports[local]["model_id"]
    here, there = EmbeddingStore(local), EmbeddingStore(remote)
    ids = here.query("patches").select("patch_id").to_polars()["patch_id"].sort().to_list()
    assert len(ids) > 10
    assert there.query("patches").select("patch_id").to_polars()["patch_id"].sort().to_list() == ids
    assert np.array_equal(there.patch_store.pixels(ids), here.patch_store.pixels(ids))
    model = reports[local]["model_id"]
    a = here.query("embeddings", model).to_arrow().sort_by("patch_id")
    b = there.query("embeddings", model).to_arrow().sort_by("patch_id")
    assert b.column("patch_id").to_pylist() == ids == a.column("patch_id").to_pylist()
    np.testing.assert_allclose(vectors(b), vectors(a), atol=1e-6)
    found = {s: _ok(["search", "--store", s, "--patch-id", ids[3], "-k", "5"]) for s in stores}
    hits = {s: pl.DataFrame(found[s]["results"]) for s in stores}
    assert hits[local].height == 5 and found[remote]["queries"] == found[local]["queries"]
    assert hits[remote].drop("distance").equals(hits[local].drop("distance"))
    np.testing.assert_allclose(hits[remote]["distance"], hits[local]["distance"], atol=1e-6)
    info = {store: _ok(["info", "--store", store]) for store in stores}
    assert info[remote]["patches"] == info[local]["patches"] == len(ids)
    assert info[remote]["size_bytes"] > 0
    assert not StoreLocation.parse(remote).exists(LEASE)  # released


@pytest.mark.realdata
def test_sigkill_of_an_s3_encode_then_rerun_gives_one_row_per_patch(stores, monkeypatch):
    monkeypatch.setenv("CLANET_STORE_LEASE_S", "3")  # the killed run's lease expires soon
    remote = stores[1]
    cmd = [str(BIN / "clanet-store"), "encode", "--store", remote, "--arch"]
    cmd += ["vit_small_patch8_224", "--batch-size", "4", "--commit-every", "4", "--seed", "7"]
    cmd += ["--wait"]  # the re-run waits for the killed run's lease to expire
    model_id, report = kill_and_resume(cmd, remote, "embeddings", pl.col("weights_source") == SEED7)
    assert report["model_id"] == model_id


@pytest.mark.realdata
def test_a_second_writer_is_refused_while_the_lease_lives(s3, export, monkeypatch):
    monkeypatch.setenv("CLANET_STORE_LEASE_S", "2")
    url = "s3://clanet/lease/store"
    with writer_lock(url):
        time.sleep(2.5)  # past the lease's lifetime: the heartbeat keeps it live
        with pytest.raises(StoreBusyError) as refused, writer_lock(url):
            pass
        line = _fails(["ingest", str(export), "--store", url, "--workers", "1"])
    message = str(refused.value)
    assert message.startswith(f"{url}: another process (") and "\n" not in message
    assert f"pid {os.getpid()}" in message and "holds the writer lease until 20" in message
    assert line.startswith(f"Error: {url}: another process (") and "lease until" in line
    with writer_lock(url):  # released on exit
        pass


def test_a_dead_writers_lease_lets_the_next_writer_in_once_it_expired(s3, monkeypatch):
    monkeypatch.setenv("CLANET_STORE_LEASE_S", "2")
    url = "s3://clanet/dead/store"
    code = f"from clanet_store.stores.lock import writer_lock\nwith writer_lock({url!r}):\n"
    code += "    print('held', flush=True)\n    import time; time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(StoreBusyError, match="holds the writer lease until"), writer_lock(url):
        pass
    time.sleep(2.2)
    with writer_lock(url):  # taken over (If-Match on the expired lease's ETag)
        assert json.loads(StoreLocation.parse(url).read_bytes(LEASE))["holder"].endswith(")")


def test_of_writers_racing_for_an_expired_lease_exactly_one_wins(s3, monkeypatch):
    monkeypatch.setenv("CLANET_STORE_LEASE_S", "30")
    url = "s3://clanet/race/store"
    expired = b'{"holder": "dead", "expires": "2000-01-01T00:00:00+00:00"}'
    StoreLocation.parse(url).write_bytes(LEASE, expired)
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def writer() -> None:
        start.wait()
        try:
            with writer_lock(url):
                outcomes.append("won")
                time.sleep(1)  # hold it while the others try
        except StoreBusyError:
            outcomes.append("refused")

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]


def test_a_writer_whose_lease_was_taken_over_stops(s3, monkeypatch):
    monkeypatch.setenv("CLANET_STORE_LEASE_S", "1.5")
    url = "s3://clanet/taken/store"
    where = StoreLocation.parse(url)
    stopped = "writer stopped: another writer took the lease"
    with pytest.raises(StoreBusyError, match=stopped), writer_lock(url):
        where.write_bytes(LEASE, b'{"holder": "x", "expires": "2999-01-01T00:00:00+00:00"}')
        time.sleep(5)  # the next heartbeat finds another lease and stops this writer


@pytest.fixture(scope="module")
def authenticating_s3():
    """A second moto server that checks credentials (none are valid)."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("command", ["ingest", "info", "repair"])
@pytest.mark.realdata
def test_bad_endpoint_credentials_or_bucket_fail_in_one_line(
    s3, authenticating_s3, export, monkeypatch, command
):
    cases = [
        ("s3://clanet/x", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "reach"),
        ("s3://clanet/x", {"AWS_ENDPOINT_URL": authenticating_s3}, "access denied"),
        ("s3://no-such-bucket/x", {}, "no such bucket"),
    ]
    for url, env, reason in cases:
        args = ["ingest", str(export), "--workers", "1"] if command == "ingest" else [command]
        with monkeypatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            line = _fails([*args, "--store", url])
        assert line.startswith(f"Error: {url}: ") and reason in line, line
    assert not StoreLocation.parse("s3://clanet/x").entries()  # nothing written
    with pytest.raises(ClanetError, match="no such bucket"):
        StoreLocation.parse("s3://no-such-bucket/x").entries()


def _upload(folder: Path, url: str) -> None:
    """Copy a local store's files under an s3:// prefix (the layout is the same)."""
    store = StoreLocation.parse(url).object_store()
    for file in folder.rglob("*"):
        if file.is_file():
            obstore.put(store, file.relative_to(folder).as_posix(), file.read_bytes())


def test_train_on_s3_equals_train_on_a_local_store(s3, tmp_path):
    root = tmp_path / "synth"
    synth_export(root / "export", 3, 2, 2, 1, seed=0)  # 12 images, 12 sequences
    local, remote = root / "store", "s3://clanet/train/store"
    ingest(root / "export", local, workers=1)
    encode(local, classic_encoder(local))
    _upload(local, remote)
    reports = {}
    for store in (str(local), remote):
        out = tmp_path / ("local" if store == str(local) else "s3") / "mil.pt"
        args = ["train", "--store", store, "--split", "batch-separated", "--repeat", "1"]
        reports[store] = _ok([*args, "--epochs", "2", "--out", str(out)])
    a, b = reports[str(local)], reports[remote]
    assert (b["train_sequences"], b["test_sequences"]) == (
        a["train_sequences"],
        a["test_sequences"],
    )


def test_a_location_takes_the_environment_then_the_storage_options(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    where = StoreLocation.parse("s3://bucket/a/b/", ["endpoint=http://given:9000", "Timeout=5s"])
    assert str(where) == "s3://bucket/a/b" and where.child("lance") == "s3://bucket/a/b/lance"
    options = dict(where.options)
    assert options["endpoint"] == "http://given:9000" and options["region"] == "eu-west-1"
    assert options["timeout"] == "5s" and "given" not in repr(where)  # credentials stay out
    assert str(StoreLocation.parse(Path("some/folder/"))) == str(Path("some/folder"))
    for bad, message in [("ftp://host/x", "not a local path"), ("s3://", "not a local path")]:
        with pytest.raises(ClanetError, match=message):
            StoreLocation.parse(bad)
    with pytest.raises(ClanetError, match="applies to s3://"):
        StoreLocation.parse("folder", ["region=x"])
    with pytest.raises(ClanetError, match="is not KEY=VALUE"):
        StoreLocation.parse("s3://bucket/x", ["region"])
