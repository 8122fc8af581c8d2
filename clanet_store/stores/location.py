"""Where a store lives: a local folder, or a prefix on object storage (``s3://``, ``gs://``,
``az://``), and the one way every part of the store is reached there.

A `StoreLocation` gives the Zarr v3 store of the patch array, the LanceDB connection of the tables
and small-object reads and writes (``store.json``, the writer's lease). On object storage Zarr goes
through ``zarr.storage.ObjectStore`` over obstore (the same Rust ``object_store`` crate LanceDB
uses, so one set of options configures both; docs/cluster.md). Endpoint and credentials come
from the standard environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``; for
``az://`` ``AZURE_STORAGE_ACCOUNT_NAME``, ``_ACCOUNT_KEY``, ``_ENDPOINT``, ...: `AZURE_ENV`),
overridden by ``--storage-option KEY=VALUE``; they are read once, where the location is parsed,
and travel with it (e.g. to Dask workers). Errors of the object store become one line naming
the URL.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lancedb
import obstore
from obstore.exceptions import BaseError as ObjectStoreError
from obstore.store import from_url
from zarr.storage import ObjectStore

from clanet_store.errors import ClanetError

SCHEMES = ("s3", "gs", "az")
# Environment variables read for s3:// locations, and the option each one sets.
AWS_ENV = {  # a later variable wins over an earlier one for the same option
    "AWS_ENDPOINT": "endpoint",
    "AWS_ENDPOINT_URL": "endpoint",
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "token",
    "AWS_DEFAULT_REGION": "region",
    "AWS_REGION": "region",
    "AWS_ALLOW_HTTP": "allow_http",
}
# The same for az:// (Azure Blob Storage; an emulator such as Azurite: its endpoint, account and
# key, or USE_EMULATOR for its defaults).
AZURE_ENV = {
    "AZURE_STORAGE_ACCOUNT_NAME": "account_name",
    "AZURE_STORAGE_ACCOUNT_KEY": "account_key",
    "AZURE_STORAGE_SAS_TOKEN": "sas_token",
    "AZURE_STORAGE_USE_EMULATOR": "use_emulator",
    "AZURE_STORAGE_ENDPOINT": "endpoint",
    "AZURE_ALLOW_HTTP": "allow_http",
}
_ENV = {"s3": AWS_ENV, "az": AZURE_ENV}
# Options of the HTTP client rather than of the store (obstore takes them apart).
_CLIENT_KEYS = {"allow_http", "allow_invalid_certificates", "connect_timeout", "timeout"}
# obstore's store configs take keys without the provider's prefix (``endpoint``, not
# ``aws_endpoint``); LanceDB takes either.
_PREFIXES = {"s3": ("aws_",), "gs": ("google_",), "az": ("azure_storage_", "azure_")}


@dataclass(frozen=True)
class StoreLocation:
    """A store's root: ``url`` is the local path as given, or ``scheme://bucket/prefix``;
    ``options`` the object-store options (endpoint, credentials, region, ...)."""

    url: str
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # credentials

    @classmethod
    def parse(
        cls,
        where: str | Path | StoreLocation,
        options: Iterable[str] | Mapping[str, str] = (),
    ) -> StoreLocation:
        """A location from a path or URL; ``options`` as ``KEY=VALUE`` strings or a mapping,
        over the environment's ``AWS_*`` variables for ``s3://``, ``AZURE_STORAGE_*`` for
        ``az://``."""
        if isinstance(where, StoreLocation):
            return where
        text = str(where)
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if not scheme:
            if options:
                raise ClanetError(f"{text}: --storage-option applies to s3://, gs:// or az:// only")
            return cls(str(Path(text)))
        if scheme not in SCHEMES or not text.split("://", 1)[1].strip("/"):
            raise ClanetError(f"{text}: not a local path or an s3://, gs:// or az:// bucket URL")
        env = _ENV.get(scheme, {})
        merged = {v: os.environ[k] for k, v in env.items() if k in os.environ}
        merged.update(_option_pairs(text, options))
        return cls(text.rstrip("/"), tuple(sorted(merged.items())))

    def __str__(self) -> str:
        return self.url

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    @property
    def local_path(self) -> Path:
        """The folder of a local store."""
        if not self.is_local:
            raise ClanetError(f"{self.url}: this needs a store in a local folder")
        return Path(self.url)

    def absolute(self) -> StoreLocation:
        """The same location, valid from any working directory (for Dask workers)."""
        return StoreLocation(str(self.local_path.absolute())) if self.is_local else self

    def child(self, name: str) -> str:
        """The path or URL of a part of the store (``patches.zarr``, ``lance``, ...)."""
        return str(Path(self.url) / name) if self.is_local else f"{self.url}/{name}"

    # --- the parts of the store ---------------------------------------------------------------

    def lance_options(self) -> dict[str, str] | None:
        """LanceDB's ``storage_options`` (None for a local folder)."""
        return None if self.is_local else dict(self.options)

    def lance(self, **kwargs: Any) -> lancedb.DBConnection:
        """The LanceDB database of the store's tables."""
        return lancedb.connect(self.child("lance"), storage_options=self.lance_options(), **kwargs)

    def zarr_store(self, name: str) -> str | ObjectStore:
        """What ``zarr.open_array`` / ``zarr.create_array`` take for the array ``name``."""
        if self.is_local:
            return self.child(name)
        return ObjectStore(_object_store(self.child(name), self.options))

    # --- small objects ------------------------------------------------------------------------

    def read_bytes(self, name: str) -> bytes:
        """A small object's bytes (FileNotFoundError when it does not exist)."""
        if self.is_local:
            return (Path(self.url) / name).read_bytes()
        with self.errors():
            return obstore.get(self.object_store(), name).bytes().to_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace a small object atomically (locally: write a temporary file, then rename)."""
        if self.is_local:
            tmp = Path(self.url) / f"{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(Path(self.url) / name)
            return
        with self.errors():
            obstore.put(self.object_store(), name, data)

    def exists(self, name: str) -> bool:
        """Whether the object (or, locally, the file or folder) ``name`` exists."""
        if self.is_local:
            return (Path(self.url) / name).exists()
        try:
            with self.errors():
                obstore.head(self.object_store(), name)
        except FileNotFoundError:
            return False
        return True

    def delete(self, name: str) -> None:
        """Remove a small object (no error when it is gone)."""
        if self.is_local:
            (Path(self.url) / name).unlink(missing_ok=True)
            return
        with self.errors():
            obstore.delete(self.object_store(), name)

    def entries(self) -> list[str]:
        """The names directly under the root (files and folders; empty for a new location). On
        object storage this is the request that fails first on a wrong bucket, credentials or
        endpoint."""
        if self.is_local:
            path = Path(self.url)
            return sorted(e.name for e in os.scandir(path)) if path.is_dir() else []
        with self.errors():
            found = obstore.list_with_delimiter(self.object_store())
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]]
        return sorted(names + [o["path"].rsplit("/", 1)[-1] for o in found["objects"]])

    def size(self) -> int:
        """Bytes stored under the root."""
        if self.is_local:
            return sum(
                os.path.getsize(os.path.join(root, f))
                for root, _, files in os.walk(self.url)
                for f in files
            )
        with self.errors():
            return sum(o["size"] for chunk in obstore.list(self.object_store()) for o in chunk)

    def object_store(self) -> Any:
        """The obstore store of the root (object storage only)."""
        return _object_store(self.url, self.options)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Object-store errors as one line naming this URL (a missing object stays a
        FileNotFoundError, for the caller to handle)."""
        try:
            yield
        except FileNotFoundError:
            raise
        except ObjectStoreError as exc:
            reason = object_store_reason(exc, dict(self.options))
            raise ClanetError(f"{self.url}: {reason}") from None


def object_store_reason(exc: Exception, options: Mapping[str, str]) -> str:
    """Why an object-store request failed, in a few words."""
    text = str(exc)
    endpoint = options.get("endpoint", "the default endpoint")
    if "NoSuchBucket" in text:
        return "no such bucket"
    if "error sending request" in text:
        return f"cannot reach {endpoint} (check AWS_ENDPOINT_URL or --storage-option endpoint=)"
    denied = ("PermissionDeniedError", "UnauthenticatedError")
    if type(exc).__name__ in denied or "403 Forbidden" in text:
        return (
            "access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or "
            "--storage-option)"
        )
    return text.splitlines()[0][:200]


def _option_pairs(url: str, options: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(options, Mapping):
        return {str(k).lower(): str(v) for k, v in options.items()}
    pairs = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClanetError(f"{url}: --storage-option {item!r} is not KEY=VALUE")
        pairs[key.strip().lower()] = value
    return pairs


@functools.lru_cache(maxsize=32)
def _object_store(url: str, options: tuple[tuple[str, str], ...]) -> Any:
    """One obstore store per URL and options (a client holds a connection pool)."""
    scheme = url.split("://", 1)[0]
    config, client = {}, {}
    for key, value in options:
        short = next((key[len(p) :] for p in _PREFIXES[scheme] if key.startswith(p)), key)
        short = "endpoint" if short == "endpoint_url" else short
        (client if short in _CLIENT_KEYS else config)[short] = value
    try:
        return from_url(url, config=config or None, client_options=client or None)
    except (ObjectStoreError, ValueError, TypeError) as exc:
        raise ClanetError(f"{url}: {str(exc).splitlines()[0][:200]}") from None
