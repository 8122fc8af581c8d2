"""Stores on object storage (issue 22), against a real S3 server: moto's server mode on
127.0.0.1, started here. ingest + encode (on a Dask worker) + search + info, and train, on
``s3://bucket/prefix`` give what they give on a local store, and so does ``encode`` on a real
``dask scheduler`` with two ``dask worker`` processes; a wrong endpoint, wrong credentials
or a missing bucket fail in one line naming the URL with nothing written; the writer lease
refuses a second writer while it is live and lets one in after it expired; ``kill -9`` of an
``s3://`` encode, then a re-run, leaves one row per patch. On ``az://``, against Azurite (Azure
Blob Storage's emulator, started here): ingest + encode + search + info, and the lease."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import obstore
import polars as pl
import pytest
from click.testing import CliRunner
from dask_processes import free_port
from test_encode import SEED7, kill_and_resume
from test_encode_cluster import stored_rows, tiny_vit

from clanet_store.cli import main
from clanet_store.errors import ClanetError
from clanet_store.exports.synth import synth_export
from clanet_store.pipelines.encode import classic_encoder, encode
from clanet_store.pipelines.encode_workers import Cluster
from clanet_store.pipelines.ingest import ingest
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.lock import LEASE, StoreBusyError, writer_lock
from clanet_store.stores.query import vectors

BIN = Path(sys.executable).parent
# Where `make` installs Azurite (npm), and its well-known development account.
AZURITE_NPM = BIN.parent / "node" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
IMAGES = ("A431/A431_B1_1_00d00h00m.jpg", "HCC 2279/HCC 2279_G7_1_06d04h00m.jpg")


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
def local_store(export, tmp_path_factory) -> str:
    """The export ingested into a store in a local folder."""
    local = str(tmp_path_factory.mktemp("local") / "store")
    _ok(["ingest", str(export), "--store", local, "--workers", "1"])
    return local


@pytest.fixture(scope="module")
def stores(s3, export, local_store) -> tuple[str, str]:
    """The same export ingested into a local store and into one on the S3 server."""
    remote = "s3://clanet/ingested/store"
    _ok(["ingest", str(export), "--store", remote, "--workers", "1"])
    return local_store, remote


@pytest.fixture(scope="module")
def azurite(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Azurite's Blob Storage emulator on 127.0.0.1 with the container ``clanet``; the
    AZURE_STORAGE_* variables point at it (Azurite's well-known development account) for this
    module. Skipped when Azurite is not installed (``make`` installs it with npm), a failure
    under CI=true."""
    binary = shutil.which("azurite-blob") or AZURITE_NPM
    if not Path(binary).is_file():
        message = f"Azurite not installed (npm install --prefix {AZURITE_NPM.parents[2]} azurite)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: the az:// tests must run)")
        pytest.skip(message)
    port = free_port()
    cmd = [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent"]
    cmd += ["--location", str(tmp_path_factory.mktemp("azurite")), "--skipApiVersionCheck"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port)
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    env = {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY}
    env |= {"AZURE_STORAGE_ENDPOINT": endpoint, "AZURE_ALLOW_HTTP": "true"}
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient(endpoint, {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
                      ).create_container("clanet")  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env
    proc.kill()
    proc.wait()


def _same_as_local(local: str, remote: str) -> None:
    """``encode``, ``search`` and ``info`` on ``remote``, a store on object storage ingested from
    the same export as the store in the folder ``local``, give what they give on ``local``."""
    command = ["encode", "--encoder", "classic", "--store"]
    # On object storage the encoder runs on a Dask worker, which reads the pixels from the bucket.
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
    stores = (local, remote)
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
def test_ingest_encode_search_on_s3_equal_a_local_store(stores):
    _same_as_local(*stores)


@pytest.mark.realdata
def test_ingest_encode_search_on_azure_equal_a_local_store(azurite, export, local_store):
    remote = "az://clanet/ingested/store"
    _ok(["ingest", str(export), "--store", remote, "--workers", "1"])
    _same_as_local(local_store, remote)


def test_the_lease_on_azure_refuses_a_second_writer_and_expires(azurite, monkeypatch):
    monkeypatch.setenv("CLANET_STORE_LEASE_S", "2")
    url = "az://clanet/lease/store"
    with writer_lock(url):
        time.sleep(2.5)  # past the lease's lifetime: the heartbeat (If-Match) kept it live
        with pytest.raises(StoreBusyError, match="holds the writer lease until"), writer_lock(url):
            pass
    expired = b'{"holder": "dead", "expires": "2000-01-01T00:00:00+00:00"}'
    StoreLocation.parse(url).write_bytes(LEASE, expired)
    with writer_lock(url):  # taken over: If-Match on the expired lease's ETag
        assert json.loads(StoreLocation.parse(url).read_bytes(LEASE))["holder"] != "dead"


@pytest.mark.realdata
def test_encode_on_a_scheduler_of_an_s3_store_equals_a_single_process_encode(
    scheduler, stores, tmp_path
):
    # ``scheduler`` first: its workers start without the AWS_* variables, so they reach the
    # bucket only through the options the driver sends with each task.
    local, remote = stores
    encoder = tiny_vit(tmp_path)
    alone = encode(local, encoder, batch_size=8)
    spread = encode(remote, encoder, batch_size=8, commit_every=16,
                    cluster=Cluster(scheduler=scheduler))  # fmt: skip
    assert (spread.workers, alone.workers) == (2, 0) and spread.model_id == alone.model_id
    assert spread.patches_encoded == alone.patches_encoded > 10
    ids, got = stored_rows(remote, alone.model_id)
    expected_ids, expected = stored_rows(local, alone.model_id)
    assert ids == expected_ids and len(set(ids)) == len(ids)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    again = encode(remote, encoder, cluster=Cluster(scheduler=scheduler))
    assert (again.patches_encoded, again.patches_skipped) == (0, alone.patches_encoded)
    assert not StoreLocation.parse(remote).exists(LEASE)


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
    _wait_for_port(port)
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


def _wait_for_port(port: int) -> None:
    """Until a server listens on 127.0.0.1:``port`` (at most a minute)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"no server on port {port}"
            time.sleep(0.2)


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
