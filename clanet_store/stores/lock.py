"""One writer at a time: an advisory ``flock`` on ``<store>/.write.lock``.

The kernel drops the lock when the holding process dies (even on ``kill -9``), so a crashed
ingest never leaves a stale lock. Readers never take it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clanet_store.errors import ClanetError


class StoreBusyError(ClanetError):
    """Another process is writing to the store."""


@contextmanager
def writer_lock(store: Path, wait: bool = False, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the store's writer lock; fail at once (or wait) if another writer holds it."""
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
