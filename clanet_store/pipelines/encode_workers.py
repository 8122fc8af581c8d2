"""``encode`` on a Dask cluster: workers read pixels from the store and run the encoder.

The driver keeps the work list and stays the one writer (`pipelines.encode.encode` commits as in
one process); a task is one batch of array rows. Workers open the store themselves (LanceDB tables
and Zarr arrays do not pickle: one store object per worker process and run) and return
``(vectors, device)``. The encoder reaches each worker once: it is scattered with ``broadcast``
before the first task, and every task names that one piece of worker data (a worker that joins
later copies it from a peer, once). With ``device="cuda"`` tasks ask for the worker resource
``GPU=1``: start one worker per GPU with ``--resources GPU=1``.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from distributed import Client, get_worker

from clanet_store.errors import ClanetError
from clanet_store.models.classic import ClassicEncoder
from clanet_store.models.device import inference_context, select_device
from clanet_store.models.protocol import Encoder
from clanet_store.pipelines.ingest import dask_client
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.patch_store import PatchStore

# The store a worker process has open, for one run (a later run reopens it: ingest may have
# grown the patch array since).
_OPEN: dict[str, PatchStore] = {}


@dataclass(frozen=True)
class Cluster:
    """Where ``encode`` runs its encoder: ``workers`` local processes (a LocalCluster) or the
    workers of the scheduler at ``scheduler``; ``device`` on each worker (auto, cpu, cuda)."""

    workers: int | None = None
    scheduler: str | None = None
    device: str = "auto"

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def embed_rows(
    run: str, store_path: str | StoreLocation, rows: np.ndarray, encoder: Encoder, device: str
) -> tuple[np.ndarray, str]:
    """Worker task: the embeddings of the patches at array ``rows`` of the store, float32
    [len(rows), D], and the device they were computed on."""
    store = _OPEN.get(run)
    if store is None:
        _OPEN.clear()
        store = _OPEN[run] = PatchStore(store_path)
    if isinstance(encoder, torch.nn.Module):
        try:
            encoder.to(select_device(device))  # in place: only the worker's first task moves it
        except ValueError as exc:
            raise ClanetError(f"dask worker {get_worker().address}: {exc}") from None
    pixels = torch.from_numpy(store.read_rows(rows))
    with inference_context(encoder.device):
        vectors = encoder(pixels.to(encoder.device)).cpu().numpy()
    return vectors, str(encoder.device)


class RemoteEncoder:
    """Batches of array rows -> embeddings, computed by the workers of ``client``."""

    def __init__(
        self, client: Client, store_path: str | StoreLocation, encoder: Encoder, device: str
    ) -> None:
        self.client = client
        self.store_path = store_path
        self.device = device
        workers = client.scheduler_info()["workers"].values()
        self.workers = len(workers)
        self.devices: set[str] = set()
        self.run = uuid.uuid4().hex
        self.resources = {"GPU": 1} if device == "cuda" else None
        if self.resources and not any(w.get("resources", {}).get("GPU") for w in workers):
            # Tasks asking for a resource no worker holds would wait for ever.
            raise ClanetError(
                f"{client.scheduler.address}: no dask worker holds the resource GPU (start one "
                "worker per GPU with --resources GPU=1), which --device cuda asks for"
            )
        self.encoder = client.scatter(_shippable(encoder), broadcast=True, hash=False)

    def vectors(self, rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """The embeddings of ``rows`` batch by batch, in order; a few batches per worker in
        flight, so no worker waits for the driver's commits."""
        starts = iter(range(0, len(rows), batch_size))
        running: deque = deque()

        def submit() -> None:
            for start in starts:
                batch = rows[start : start + batch_size]
                args = (self.run, self.store_path, batch, self.encoder, self.device)
                running.append(
                    self.client.submit(embed_rows, *args, pure=False, resources=self.resources)
                )
                return

        for _ in range(2 * max(self.workers, 1) + 2):
            submit()
        while running:
            future = running.popleft()
            vectors, device = future.result()
            future.release()
            self.devices.add(device)
            submit()
            yield vectors

    def describe(self) -> str:
        """Where the vectors were computed, e.g. ``2 dask workers (cpu)``."""
        return f"{self.workers} dask workers ({', '.join(sorted(self.devices)) or self.device})"


def _shippable(encoder: Encoder) -> Encoder:
    """The encoder as it travels to the workers: a ViT on the CPU (each worker moves it to its
    device), the classic descriptor without the driver's cache of fitted features and on one
    thread (a worker runs one task per thread)."""
    if isinstance(encoder, ClassicEncoder):
        return ClassicEncoder(encoder.config, threads=1)
    if encoder.device.type != "cpu":
        raise ValueError("load the encoder on the CPU for a cluster encode: workers choose device")
    return encoder


@contextmanager
def remote_encoder(
    cluster: Cluster, store_path: str | StoreLocation, encoder: Encoder
) -> Iterator[RemoteEncoder]:
    """A `RemoteEncoder` on the cluster ``cluster`` describes, closed (with a local cluster's
    processes) on exit."""
    resources = {"GPU": 1} if cluster.device == "cuda" and not cluster.scheduler else None
    with dask_client(cluster.workers, cluster.scheduler, resources=resources) as client:
        yield RemoteEncoder(client, store_path, encoder, cluster.device)
