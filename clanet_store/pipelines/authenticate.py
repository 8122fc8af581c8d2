"""``authenticate``: judge new sequences against a reference library held in the store.

Reads one encoder's sequence vectors (`stores.sequence_embeddings`; brought up to date first,
under the writer lock, when a source table changed since their last update), splits them into the
new selection and the reference library (default: everything else), and applies the rules of
`learn.authentication` (calibration inside the library, verdicts per sequence and per batch).
Filters are the typed expressions of `stores.filters` on the sequence table's columns.
``evaluate_store`` measures the rules on the library itself. With a MIL model file (``--mil``)
the sequence vectors are its bag vectors z (`mil_pooling`), of its own encoder's embeddings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.learn.authentication import (
    FALSE_ALARM,
    TOP_M,
    Authentication,
    Library,
    LibraryEvaluation,
    Verdict,
    authenticate,
    calibrate,
    evaluate_library,
    unit_keys,
    unit_vectors,
)
from clanet_store.learn.inference import bag_vectors
from clanet_store.learn.model_file import load_model
from clanet_store.models.health import EmbeddingHealth
from clanet_store.pipelines.evaluate_encoder import Encoder, sample_health
from clanet_store.schemas import load_schema
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.filters import parse_filters
from clanet_store.stores.lock import writer_lock
from clanet_store.stores.sequence_embeddings import (
    MEAN,
    Pooling,
    is_current,
    read_sequences,
    update_sequence_embeddings,
)


@dataclass(frozen=True)
class StoreAuthentication:
    """``authenticate``'s result: the encoder, the pooling of its sequence vectors and the
    verdicts."""

    encoder: Encoder
    pooling: str
    reference_sequences: int
    result: Authentication

    def as_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.as_dict(),
            "pooling": self.pooling,
            "reference_sequences": self.reference_sequences,
            **self.result.as_dict(),
        }


@dataclass(frozen=True)
class StoreEvaluation:
    """``authenticate --evaluate``'s result: the encoder, its health, the pooling and the
    verdict rates."""

    encoder: Encoder
    health: EmbeddingHealth | None
    pooling: str
    evaluation: LibraryEvaluation

    def as_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.as_dict(),
            "pooling": self.pooling,
            "health": self.health.as_dict() if self.health else None,
            **self.evaluation.as_dict(),
        }


def sequence_filter(texts: Sequence[str]) -> Expr | None:
    """``--new`` / ``--reference`` filters typed by the sequence table's columns."""
    return parse_filters(texts, load_schema("sequence_embeddings"))


def mil_pooling(path: str | Path, model_id: str | None) -> tuple[Pooling, str]:
    """The `Pooling` of a MIL model file (``mil:<first 16 hex digits of its SHA-256>``, its k,
    its bag vector z) and its encoder's model_id. Raises ClanetError for a file that is not a
    model, a model without a bag vector, or a ``model_id`` other than its encoder's."""
    try:
        mil = load_model(path)
        dim = mil.model.classifier.in_features  # a one-patch bag: has the model a bag vector?
        mil.model.bag_vector(torch.zeros(1, 1, dim), torch.ones(1, 1, dtype=torch.bool))
    except ValueError as error:
        raise ClanetError(f"{path}: {error}") from None
    if model_id is not None and model_id != mil.encoder_model_id:
        raise ClanetError(
            f"{path}: the MIL model pools embeddings of encoder {mil.encoder_model_id}, not "
            f"{model_id}: embeddings of different encoders cannot be compared"
        )
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    pooling = Pooling(f"mil:{digest}", mil.config.k, lambda bags: bag_vectors(mil.model, bags))
    return pooling, mil.encoder_model_id


def current_store(
    store_path: str | Path, model_id: str | None, wait: bool, pooling: Pooling = MEAN
) -> EmbeddingStore:
    """The store, with the model's sequence vectors brought up to date if they are stale."""
    store = EmbeddingStore(store_path)
    if not is_current(store, model_id, pooling):
        with writer_lock(store.path, wait=wait):
            update_sequence_embeddings(store, model_id, pooling=pooling)
    return store


def _pooling(mil: str | Path | None, model_id: str | None) -> tuple[Pooling, str | None]:
    """The pooling and model_id to read: `MEAN` and ``model_id``, or ``mil``'s."""
    return (MEAN, model_id) if mil is None else mil_pooling(mil, model_id)


def reference_library(
    model_id: str, keys: pl.DataFrame, x: np.ndarray, units: np.ndarray | None = None
) -> Library:
    """A `Library` of sequence rows (``read_sequences``) and their vectors ``x``, scaled to unit
    length (in place when ``x`` is writeable: it becomes the library's); ``units`` default to
    the rows' own (`unit_keys` of these rows alone)."""
    return Library(
        model_id=model_id,
        vectors=unit_vectors(x, in_place=True),
        lines=keys["cell_line"].to_numpy().astype(str),
        units=unit_keys(keys["cell_line"], keys["batch"], keys["well"]) if units is None else units,
        sequences=keys["sequence_id"].to_numpy().astype(str),
        images=keys["image_id"].to_numpy().astype(str),
    )


def with_paths(store: EmbeddingStore, result: Authentication) -> Authentication:
    """The verdicts with each nearest reference sequence's image path filled in (read for
    those images only: the whole images table takes ~1 s at 100,000 images)."""
    ids = sorted({n.image_id for v in (*result.sequences, *result.batches) for n in v.nearest})
    images = store.query("images").where(col("image_id").isin(ids)).select("image_id", "path")
    paths = dict(images.to_polars().iter_rows()) if ids else {}

    def fill(verdicts: tuple[Verdict, ...]) -> tuple[Verdict, ...]:
        return tuple(
            replace(v, nearest=tuple(replace(n, path=paths.get(n.image_id)) for n in v.nearest))
            for v in verdicts
        )

    return replace(result, sequences=fill(result.sequences), batches=fill(result.batches))


def authenticate_store(
    store_path: str | Path,
    new: Sequence[str],
    claimed: str | None = None,
    reference: Sequence[str] = (),
    model_id: str | None = None,
    allow_new_line: bool = False,
    false_alarm: float = FALSE_ALARM,
    top_m: int = TOP_M,
    wait: bool = False,
    mil: str | Path | None = None,
) -> StoreAuthentication:
    """Verdicts for the sequences ``new`` selects, each claimed to be ``claimed`` (None: its
    own stored cell line), against the sequences ``reference`` selects minus the new ones;
    sequence vectors pooled by the MIL model file ``mil`` (None: the mean). Raises ClanetError
    for an empty selection or library, or a claimed line the library lacks (unless
    ``allow_new_line``)."""
    if not new:
        raise ClanetError("give --new filters selecting the sequences to authenticate")
    pooling, model_id = _pooling(mil, model_id)
    store = current_store(store_path, model_id, wait, pooling)
    model = store.encoder(model_id)
    mid = model.model_id
    new_keys, new_x = read_sequences(store, mid, sequence_filter(new), pooling)
    if new_keys.height == 0:
        raise ClanetError(f"{store.path}: --new {' '.join(new)} selects no sequence of {mid}")
    ref_keys, ref_x = read_sequences(store, mid, sequence_filter(reference), pooling)
    keep = ~ref_keys["row_id"].is_in(new_keys["row_id"].implode()).to_numpy()
    ref_keys, ref_x = ref_keys.filter(pl.Series(keep)), ref_x[keep]
    if ref_keys.height == 0:
        raise ClanetError(f"{store.path}: the reference library of {mid} is empty")
    everything = pl.concat([ref_keys, new_keys])
    # Units over both sides: a line whose one reference batch is joined by a new one is split
    # by batch, not by well, on both.
    units = unit_keys(everything["cell_line"], everything["batch"], everything["well"])
    library = reference_library(mid, ref_keys, ref_x, units[: ref_keys.height])
    claims = new_keys["cell_line"].to_list() if claimed is None else [claimed] * new_keys.height
    absent = sorted(set(claims) - set(library.line_names))
    if absent and not allow_new_line:
        raise ClanetError(
            f"claimed line(s) {', '.join(map(repr, absent))} not in the reference library "
            f"({len(library.line_names)} lines); --allow-new-line authenticates a line it lacks"
        )
    result = authenticate(
        library,
        calibrate(library, false_alarm, top_m),
        new_x,
        units[ref_keys.height :],
        claims,
        new_keys["sequence_id"].to_list(),
        mid,
    )
    return StoreAuthentication(
        Encoder.of(model), pooling.name, ref_keys.height, with_paths(store, result)
    )


def evaluate_store(
    store_path: str | Path,
    reference: Sequence[str] = (),
    model_id: str | None = None,
    false_alarm: float = FALSE_ALARM,
    top_m: int = TOP_M,
    wait: bool = False,
    mil: str | Path | None = None,
) -> StoreEvaluation:
    """`learn.authentication.evaluate_library` on the sequences ``reference`` selects (pooled
    by the MIL model file ``mil``: its training sequences are then no held-out evidence)."""
    pooling, model_id = _pooling(mil, model_id)
    store = current_store(store_path, model_id, wait, pooling)
    model = store.encoder(model_id)
    keys, x = read_sequences(store, model.model_id, sequence_filter(reference), pooling)
    if keys.height == 0:
        raise ClanetError(f"{store.path}: the reference library of {model.model_id} is empty")
    library = reference_library(model.model_id, keys, x)
    return StoreEvaluation(
        Encoder.of(model),
        sample_health(store, model.model_id),
        pooling.name,
        evaluate_library(library, false_alarm, top_m),
    )


def held_out_verdicts(
    store_path: str | Path,
    model_id: str | None = None,
    limit: int = 8,
    false_alarm: float = FALSE_ALARM,
    top_m: int = TOP_M,
) -> tuple[list[Verdict], pl.DataFrame]:
    """Leave one batch out, for the report: each of the first ``limit`` units (sorted) whose
    line has another unit, judged under its own label against the rest of the store (calibrated
    without it); and the sequence rows (``sequence_id``, ``image_id``). Units whose rest cannot
    be calibrated are left out."""
    store = current_store(store_path, model_id, wait=False)
    mid = store.encoder(model_id).model_id
    keys, x = read_sequences(store, mid)
    library = reference_library(mid, keys, x)
    verdicts = []
    for unit in np.unique(library.units):
        held = library.units == unit
        line = str(library.lines[held][0])
        if len(verdicts) == limit:
            break
        if not np.any(library.lines[~held] == line):
            continue
        rest = library.subset(~held)
        try:
            cal = calibrate(rest, false_alarm, top_m)
        except ClanetError:
            continue
        n = int(held.sum())
        result = authenticate(
            rest, cal, x[held], library.units[held], [line] * n, library.sequences[held], mid
        )
        verdicts.append(result.batches[0])
    return verdicts, keys.select("sequence_id", "image_id")
