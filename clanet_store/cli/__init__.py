"""The ``clanet-store`` command line: parse arguments, call one library function, print.

One module per group of commands; each registers its commands on ``main`` when imported. Every
reporting command takes ``--format table|json``; failures exit non-zero with one line.
"""

from clanet_store.cli import encode, exports, imaging, store  # noqa: F401
from clanet_store.cli.app import main

__all__ = ["main"]
