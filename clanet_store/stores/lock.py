"""One writer at a time: an advisory ``flock`` on ``<store>/.write.lock`` in a local folder, a
lease object ``<store>/.write.lease`` on object storage.

The kernel drops the lock when the holding process dies (even on ``kill -9``), so a crashed
ingest never leaves a stale lock. Object storage has no locks: the writer creates the lease with a
conditional put (``If-None-Match: *``, which fails when the object exists), names itself and an
expiry in it, and renews it from a heartbeat thread every third of its lifetime with a put
conditional on the lease's ETag (``If-Match``). A second writer is refused while the lease is
live and takes it over (again with ``If-Match``, so two cannot both win) once it has expired,
e.g. after a ``kill -9``: then after at most ``CLANET_STORE_LEASE_S`` seconds (default 60). A
writer whose lease was taken over (a heartbeat stalled past the expiry) is stopped at once.
Expiry times are wall-clock UTC: the writers' clocks must agree (NTP) to within the lifetime.
Readers never take either.
"""

from __future__ import annotations

import _thread
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError

from clanet_store.errors import ClanetError
from clanet_store.stores.location import StoreLocation

LEASE = ".write.lease"
LEASE_SECONDS = 60.0


class StoreBusyError(ClanetError):
    """Another process is writing to the store."""


@contextmanager
def writer_lock(
    store: str | Path | StoreLocation, wait: bool = False, poll_s: float = 0.2
) -> Iterator[None]:
    """Hold the store's writer lock (a local folder) or lease (object storage); fail at once
    (or wait) if another writer holds it."""
    location = StoreLocation.parse(store)
    if location.is_local:
        with _flock(location.local_path, wait, poll_s):
            yield
        return
    seconds = float(os.environ.get("CLANET_STORE_LEASE_S", LEASE_SECONDS))
    with _lease(location, seconds, wait, max(poll_s, 0.5)):
        yield


@contextmanager
def _flock(store: Path, wait: bool, poll_s: float) -> Iterator[None]:
    path = store / ".write.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise StoreBusyError(
                        f"{store}: another process (pid {holder}) is writing to this store; "
                        "retry later or pass --wait"
                    ) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class _Lease:
    """This process's lease on a store: taken, renewed by a heartbeat thread, released."""

    def __init__(self, location: StoreLocation, seconds: float) -> None:
        self.location = location
        self.seconds = seconds
        self.holder = f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self.etag: str | None = None
        self.lost: str | None = None
        self.stop = threading.Event()

    def body(self) -> bytes:
        expires = datetime.now(UTC) + timedelta(seconds=self.seconds)
        record = {"holder": self.holder, "expires": expires.isoformat(timespec="seconds")}
        return json.dumps(record).encode()

    def try_take(self) -> dict | None:
        """Take the lease if it is free or expired; else the live lease's record."""
        with self.location.errors():
            while True:
                if self._put("create"):
                    return None
                try:
                    current = obstore.get(self.location.object_store(), LEASE)
                except FileNotFoundError:
                    continue  # released meanwhile
                record = _record(current.bytes().to_bytes())
                if datetime.fromisoformat(record["expires"]) > datetime.now(UTC):
                    return record
                if self._put({"e_tag": current.meta["e_tag"]}):
                    return None
                # another writer took the expired lease over first: look again

    def _put(self, mode: str | dict) -> bool:
        """Write the lease with a conditional put; False if the condition failed (for a
        replacement also when the lease is gone; for ``create`` a missing object means a
        missing bucket, which `StoreLocation.errors` reports)."""
        store = self.location.object_store()
        try:
            self.etag = obstore.put(store, LEASE, self.body(), mode=mode)["e_tag"]
        except (AlreadyExistsError, PreconditionError):
            return False
        except FileNotFoundError:
            if mode == "create":
                self.location.entries()  # raises the bucket's one-line error
                raise
            return False
        return True

    def heartbeat(self) -> None:
        """Renew the lease until stopped; stop the main thread when it was taken over."""
        renewed = time.monotonic()
        while not self.stop.wait(self.seconds / 3):
            try:
                if self._put({"e_tag": self.etag}):
                    renewed = time.monotonic()
                else:
                    self.lost = "another writer took the lease over"
            except Exception as exc:  # the network: retry until the lease would have expired
                if time.monotonic() - renewed > self.seconds:
                    self.lost = f"could not renew the lease ({type(exc).__name__})"
            if self.lost:
                _thread.interrupt_main()
                return

    def release(self) -> None:
        """Delete the lease if it is still this writer's."""
        store = self.location.object_store()
        try:
            if obstore.head(store, LEASE)["e_tag"] == self.etag:
                obstore.delete(store, LEASE)
        except Exception:  # gone, or unreachable: it expires by itself
            pass


@contextmanager
def _lease(location: StoreLocation, seconds: float, wait: bool, poll_s: float) -> Iterator[None]:
    lease = _Lease(location, seconds)
    while (record := lease.try_take()) is not None:
        if not wait:
            raise StoreBusyError(
                f"{location}: another process ({record['holder']}) holds the writer lease until "
                f"{record['expires']}; retry later or pass --wait"
            )
        time.sleep(poll_s)
    beat = threading.Thread(target=lease.heartbeat, name="clanet-store lease", daemon=True)
    beat.start()
    try:
        yield
    except KeyboardInterrupt:
        if lease.lost:
            raise StoreBusyError(f"{location}: writer stopped: {lease.lost}") from None
        raise
    finally:
        lease.stop.set()
        beat.join()
        if not lease.lost:
            lease.release()


def _record(data: bytes) -> dict:
    """A lease's holder and expiry; an unreadable lease counts as expired."""
    try:
        record = json.loads(data)
        datetime.fromisoformat(record["expires"])
        return record
    except (ValueError, KeyError, TypeError):
        return {"holder": "unknown", "expires": datetime.min.replace(tzinfo=UTC).isoformat()}
