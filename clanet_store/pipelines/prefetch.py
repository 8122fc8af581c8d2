"""Run an iterator a few items ahead in a background thread, so reading the next item (LanceDB,
Zarr: native code that releases the GIL) overlaps the work on the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """The items of ``items``, produced by a background thread up to ``depth`` ahead; an error
    there is raised here, and closing this generator early stops the thread."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                out.put(item)
            out.put(done)
        except Exception as exc:  # handed to the consumer, which raises it
            out.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(0.05)
