"""The ``clanet-store`` command line: parse arguments, call one library function, print.

One module per group of commands; each registers its commands on ``main`` when imported. Every
reporting command takes ``--format table|json``; failures exit non-zero with one line.
"""

from clanet_store.cli import (  # noqa: F401  (importing a module registers its commands)
    authenticate,
    encode,
    encoders,
    exports,
    imaging,
    mil,
    qc,
    report,
    runs,
    search,
    ssl,
    store,
)
from clanet_store.cli.app import main

__all__ = ["main"]
