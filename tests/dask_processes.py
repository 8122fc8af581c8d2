"""A real Dask cluster for tests: a ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1, started as the command-line tools start them (no dashboard)."""

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dask_processes(
    n_workers: int = 2, worker_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start a scheduler and ``n_workers`` single-threaded workers (with the environment
    ``env``, default this process's); yield the scheduler address once every worker has joined;
    stop them all on exit."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    procs = [subprocess.Popen([*scheduler, "--no-dashboard"], **quiet)]
    try:
        worker = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard"]
        procs += [subprocess.Popen([*worker, *worker_args], **quiet) for _ in range(n_workers)]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(n_workers, timeout=120)
        yield address
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
