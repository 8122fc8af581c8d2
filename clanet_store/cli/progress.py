"""Progress bars on stderr: the command line's side of `clanet_store.progress.Progress`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from tqdm import tqdm

from clanet_store.progress import Progress


@contextmanager
def progress(desc: str, unit: str, total: int | None = None) -> Iterator[tqdm]:
    """A progress bar on stderr (silent when stderr is not a terminal)."""
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False) as bar:
        yield bar


@contextmanager
def progress_bars(unit: str) -> Iterator[Progress]:
    """A `Progress` that draws one bar per stage (opened at the stage's first call, closed on
    exit), showing the keyword numbers of the last call beside the count."""
    with ExitStack() as stack:
        bars: dict[str, tqdm] = {}

        def update(stage: str, done: int, total: int | None, /, **numbers: float) -> None:
            if stage not in bars:
                bars[stage] = stack.enter_context(progress(stage, unit, total))
            bar = bars[stage]
            bar.total = total
            if numbers:
                bar.set_postfix({k: f"{v:.4g}" for k, v in numbers.items()}, refresh=False)
            bar.update(done - bar.n)

        yield update
