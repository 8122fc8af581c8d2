"""``evaluate-encoder``: how informative and how batch-dominated an encoder's embeddings are.

Reads one model's stored patch embeddings (every patch, with its keys), builds the image level
(mean of each image's patches of CCS rank < ``top_k``) and the sequence level (mean of its
images), and computes at each level the health of ``models.health`` and the cross-batch metrics
of ``learn.encoder_metrics`` (SPEC 9). Each run of each model appends one row per level to the
``encoder_evals`` table (key ``eval_id``, a hash of the model, the time and the level; written in
one commit under the writer lock, so a re-run adds a later evaluation and never duplicates one).
``latest_evaluations`` gives each model's latest run, for ``info`` and the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.exports.scan import short_hash
from clanet_store.learn.encoder_metrics import (
    LEVEL_KEYS,
    LEVELS,
    MAX_QUERIES,
    LevelEvaluation,
    evaluate_levels,
)
from clanet_store.models.health import EmbeddingHealth, embedding_health
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.lock import writer_lock
from clanet_store.stores.query import vectors

TABLE = "encoder_evals"
# Embeddings read for the health line of ``encode`` and ``info`` (a pseudo-random sample by
# patch id above this: ids are hashes, so a range of ids is a uniform sample).
HEALTH_ROWS = 20_000


@dataclass(frozen=True)
class Encoder:
    """What the ``models`` table says about an encoder."""

    model_id: str
    arch: str
    weights: str
    random_init: bool
    embedding_dim: int

    @classmethod
    def of(cls, model: EncoderRecord) -> Encoder:
        return cls(
            model.model_id, model.arch, model.weights_source, model.random_init, model.embedding_dim
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EncoderEvaluation:
    """One model's evaluation (the JSON of ``evaluate-encoder --format json``, one per model)."""

    encoder: Encoder
    top_k: int
    seed: int
    evaluated_at: datetime
    seconds: float
    levels: dict[str, LevelEvaluation]

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.encoder.as_dict(),
            "top_k": self.top_k,
            "seed": self.seed,
            "evaluated_at": self.evaluated_at.isoformat(),
            "seconds": self.seconds,
            **{level: ev.as_dict() for level, ev in self.levels.items()},
        }


def evaluate_model(
    store: EmbeddingStore,
    model_id: str | None = None,
    top_k: int = 10,
    seed: int = 0,
    max_queries: int = MAX_QUERIES,
    where: Expr | None = None,
) -> EncoderEvaluation:
    """Evaluate one model's stored embeddings (default: the only or latest model), or those of
    the rows ``where`` selects (e.g. the training side of a split); writes nothing."""
    start = datetime.now(UTC).replace(tzinfo=None)
    t0 = time.perf_counter()
    model = store.encoder(model_id)
    rows = store.query("embeddings", model.model_id).where(where)
    table = rows.select(*LEVEL_KEYS, "rank", "embedding").to_arrow()
    if table.num_rows < 2:
        raise ClanetError(
            f"{store.path}: model {model.model_id} has {table.num_rows} embedding(s); "
            "evaluation needs at least 2"
        )
    keys = pl.from_arrow(table.drop_columns(["embedding"]))
    levels = evaluate_levels(vectors(table), keys, top_k=top_k, seed=seed, max_queries=max_queries)
    return EncoderEvaluation(
        encoder=Encoder.of(model),
        top_k=top_k,
        seed=seed,
        evaluated_at=start,
        seconds=time.perf_counter() - t0,
        levels=levels,
    )


def evaluation_rows(evaluation: EncoderEvaluation) -> pl.DataFrame:
    """The ``encoder_evals`` rows of one evaluation (one per level)."""
    when = evaluation.evaluated_at
    run_id = short_hash(f"{evaluation.model_id}|{when.isoformat()}")
    rows = []
    for level, ev in evaluation.levels.items():
        d = ev.as_dict()
        d["lines_by_well"] = ",".join(d["lines_by_well"])
        rows.append(
            {
                **d,
                "eval_id": short_hash(f"{run_id}|{level}"),
                "run_id": run_id,
                "model_id": evaluation.model_id,
                "level": level,
                "top_k": evaluation.top_k,
                "seed": evaluation.seed,
                "evaluated_at": when,
            }
        )
    return pl.from_arrow(lance.to_arrow(rows, TABLE))


def evaluate_encoders(
    store_path: str | Path,
    model_ids: Sequence[str] = (),
    top_k: int = 10,
    seed: int = 0,
    wait: bool = False,
    max_queries: int = MAX_QUERIES,
) -> list[EncoderEvaluation]:
    """Evaluate ``model_ids`` (default: every encoder of the store) and append the results to
    the ``encoder_evals`` table."""
    store = EmbeddingStore(store_path)
    ids = list(model_ids) or [e.model_id for e in store.encoders()]
    if not ids:
        store.encoder()  # raises: no embeddings yet
    evaluations = [evaluate_model(store, m, top_k, seed, max_queries) for m in ids]
    rows = pl.concat([evaluation_rows(e) for e in evaluations])
    with writer_lock(store.path, wait=wait):
        table = lance.open_table(store.patch_store.db, TABLE, create=True)
        store.patch_store.register_table(TABLE)
        lance.upsert(table, rows.to_arrow(), "eval_id")
    return evaluations


def latest_evaluations(store: EmbeddingStore) -> pl.DataFrame:
    """Each model's latest ``encoder_evals`` rows (one per level); empty before the first
    evaluation."""
    if TABLE not in store.patch_store.db.list_tables(limit=10_000).tables:
        return pl.from_arrow(lance.to_arrow([], TABLE))
    rows = store.query(TABLE).to_polars()
    latest = rows.group_by("model_id").agg(pl.col("evaluated_at").max())
    order = pl.col("level").replace_strict(list(LEVELS), list(range(len(LEVELS))), default=9)
    return rows.join(latest, on=["model_id", "evaluated_at"]).sort("model_id", order)


def sample_health(store: EmbeddingStore, model_id: str, seed: int = 0) -> EmbeddingHealth | None:
    """Patch-level health of a model's embeddings, from at most ``HEALTH_ROWS`` of them (the
    patch ids below a cut-off: ids are hashes, so this is a uniform, repeatable sample); None
    with fewer than two embeddings."""
    rows = store.query("embeddings", model_id)
    ids = rows.select("patch_id").to_polars()["patch_id"]
    if ids.len() > HEALTH_ROWS:
        rows = rows.where(col("patch_id") < ids.sort()[HEALTH_ROWS])
    x = rows.to_numpy("embedding")
    return embedding_health(np.asarray(x), seed=seed) if len(x) >= 2 else None


@dataclass(frozen=True)
class EncoderSummary:
    """An encoder of the store with its health and, once evaluated, its latest cross-batch
    numbers at the image level (for ``info`` and the report)."""

    encoder: Encoder
    health: EmbeddingHealth | None  # patch level, from a sample (None: fewer than 2 rows)
    evaluated_at: datetime | None
    image: dict[str, Any] | None  # the latest evaluation's image-level row, if any

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.encoder.as_dict(),
            "health": self.health.as_dict() if self.health else None,
            "evaluated_at": self.evaluated_at.isoformat() if self.evaluated_at else None,
            "image": self.image,
        }


def encoder_summaries(store: EmbeddingStore, seed: int = 0) -> list[EncoderSummary]:
    """Every encoder of the store, oldest first: patch-level health from a sample of its
    embeddings (``sample_health``) and its latest evaluation's image level."""
    latest = latest_evaluations(store).filter(pl.col("level") == "image")
    evaluated = {r["model_id"]: r for r in latest.iter_rows(named=True)}
    out = []
    for model in store.encoders():
        health = sample_health(store, model.model_id, seed)
        image = evaluated.get(model.model_id)
        out.append(
            EncoderSummary(
                encoder=Encoder.of(model),
                health=health,
                evaluated_at=image["evaluated_at"] if image else None,
                image=image,
            )
        )
    return out
