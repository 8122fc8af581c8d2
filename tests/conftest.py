"""Shared fixtures. Real images live in ../shared/data (never copied into the repo).

With CI=true the real-image tests must run: a missing data folder fails them instead of skipping,
and the session fails if no test marked ``realdata`` passed.
"""

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask_processes import dask_processes, free_port

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"
_realdata_passed = 0


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for the whole session: the 2 cores are shared with Dask workers
    and DataLoader processes, and some tests compare numbers computed twice."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-image folder; fails under CI and skips elsewhere when it is missing."""
    if not (SHARED_DATA / "azgcb_sample").is_dir():
        message = f"real images not found at {SHARED_DATA}"
        if IN_CI:
            pytest.fail(message + " (CI=true: real-image tests must run)")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="module")
def two_image_store(tmp_path_factory, shared_data) -> Path:
    """A store ingested from two real images (40 patches), one per test module: modules encode
    into it."""
    import shutil

    from clanet_store.pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("export")
    for rel in ("A431/A431_B1_1_00d00h00m.jpg", "HCC 2279/HCC 2279_G7_1_06d04h00m.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "azgcb_sample" / rel, root / rel)
    path = tmp_path_factory.mktemp("store") / "store"
    ingest(root, path, workers=1)
    return path


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A real Dask cluster, one per test module: a ``dask scheduler`` and two single-threaded
    ``dask worker`` processes on 127.0.0.1; yields the scheduler's address. The processes get no
    AWS_* or AZURE_* variables: they reach a bucket only with the options the driver sends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
    with dask_processes(2, env=env) as address:
        yield address


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with the bucket ``clanet``; the AWS_* variables point at
    it for this module (and the processes it starts)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env |= {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_REGION": "us-east-1"}
    env["AWS_ALLOW_HTTP"] = "true"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="clanet")
        yield env
    server.stop()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _realdata_passed
    if report.when == "call" and report.passed and "realdata" in report.keywords:
        _realdata_passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and exitstatus == 0 and _realdata_passed == 0:
        print("\nCI=true but no real-image (realdata) test passed: failing the run")
        session.exitstatus = 1
