"""One progress protocol for every long-running function (issue 20).

A function that takes a while takes ``progress: Progress | None`` and calls
``progress(stage, done, total)`` as it goes, ``total`` None while unknown and keyword numbers
(``loss=...``) for what a bar may show beside the count. The command line turns the calls into
one bar per stage (`clanet_store.cli.progress`); a pipeline that runs others passes its
``progress`` on, renamed with `as_stage` when the inner stage needs a name of the outer one.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``progress(stage, done, total, **numbers)``: ``done`` of ``total`` units of ``stage``."""

    def __call__(self, stage: str, done: int, total: int | None, /, **numbers: float) -> None: ...


def as_stage(progress: Progress | None, name: str) -> Progress | None:
    """``progress`` with every call's stage replaced by ``name`` (None stays None)."""
    if progress is None:
        return None

    def renamed(_: str, done: int, total: int | None, /, **numbers: float) -> None:
        progress(name, done, total, **numbers)

    return renamed
