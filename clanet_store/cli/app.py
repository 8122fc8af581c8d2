"""The ``clanet-store`` group and what every command shares: options and output (progress bars:
`clanet_store.cli.progress`)."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from clanet_store import __version__
from clanet_store.errors import ClanetError
from clanet_store.stores.location import StoreLocation
from clanet_store.textout import escape_controls, to_json

INTERRUPTED = "interrupted; the store is consistent; run the same command to continue"


class _Group(click.Group):
    """Turn ``ClanetError`` into click's one-line ``Error: ...`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClanetError as exc:
            raise click.ClickException(escape_controls(str(exc))) from None


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


@contextmanager
def interruptible() -> Iterator[None]:
    """For a store writer: Ctrl-C (SIGINT) and SIGTERM end the command with one line and exit
    code 130 / 143 (128 + the signal), after the writer's cleanup ran (cluster stopped, lock
    released). The writer commits in an order that leaves the store consistent at any moment."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(128 + signal.SIGINT)
    except _Terminated:
        click.echo(INTERRUPTED, err=True)
        sys.exit(128 + signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="human-readable table or machine-readable JSON",
)


wait_option = click.option(
    "--wait", is_flag=True, help="wait for another writer instead of failing"
)


workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="local Dask worker processes (ingest: one per core by default; encode: none by default, "
    "the encoder runs in this process)",
)
scheduler_option = click.option(
    "--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786"
)


def emit(fmt: str, payload: dict, human: str) -> None:
    """Print the JSON payload or the human text (control characters in it escaped)."""
    click.echo(to_json(payload) if fmt == "json" else escape_controls(human))


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="clanet-store")
def main() -> None:
    """clanet-store: a feature store for cross-batch cell line authentication (CLANet)."""


def store_option(command: Callable) -> Callable:
    """``--store`` (a folder or an ``s3://`` / ``gs://`` / ``az://`` URL, kept as a string:
    ``click.Path`` would turn ``s3://`` into ``s3:/``) and ``--storage-option KEY=VALUE``; the
    command gets ``store`` as a `StoreLocation`."""

    @functools.wraps(command)
    def with_location(*args: Any, store: str, storage_options: tuple[str, ...], **kwargs: Any):
        try:
            location = StoreLocation.parse(store, storage_options)
        except ClanetError as exc:
            raise click.ClickException(escape_controls(str(exc))) from None
        return command(*args, store=location, **kwargs)

    with_location = click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="object-store option for an s3:// / gs:// / az:// store, e.g. endpoint=URL "
        "(repeatable; default: the AWS_* environment variables)",
    )(with_location)
    return click.option(
        "--store",
        envvar="CLANET_STORE",
        required=True,
        help="store directory or s3:// / gs:// / az:// URL (default: $CLANET_STORE)",
    )(with_location)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
