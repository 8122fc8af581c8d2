"""Patch embeddings in LanceDB: one table per embedding width, one row per (patch_id, model_id).

``embeddings`` holds 1536-d vectors (ViT-S/8, the default); an encoder of another width (e.g. a
ViT-Ti trained by ``ssl-train``: 4 x 192 = 768) writes ``embeddings_768``, because a vector column
has one fixed size. The ``models`` table lists every encoder that wrote into the store, with its
weights source and whether it is a random init, so embeddings of different encoders never mix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
from lancedb.expr import Expr, col

from clanet_store.errors import ClanetError
from clanet_store.schemas import arrow_type, load_schema
from clanet_store.stores import lance
from clanet_store.stores.patch_store import PatchStore

DEFAULT_DIM = 1536


def embeddings_table_name(dim: int) -> str:
    """``embeddings`` for 1536-d vectors, ``embeddings_<dim>`` otherwise."""
    return "embeddings" if dim == DEFAULT_DIM else f"embeddings_{dim}"


def embeddings_schema(dim: int) -> pa.Schema:
    """The ``embeddings`` layout with a vector column of ``dim`` floats."""
    schema = load_schema("embeddings")
    i = schema.get_field_index("embedding")
    field = schema.field(i)
    vector = arrow_type(f"fixed_size_list<float32, {dim}>")
    return schema.set(i, field.with_type(vector))


class EmbeddingStore(PatchStore):
    """A store with embeddings: tables as polars, vectors as NumPy (zero-copy where possible)."""

    def models(self) -> pl.DataFrame:
        """The encoders that wrote embeddings into this store (empty before the first encode)."""
        if "models" not in self.db.list_tables(limit=10_000).tables:
            return pl.from_arrow(load_schema("models").empty_table())
        return lance.read(self.table("models"))

    def model_row(self, model_id: str | None = None) -> dict:
        """The models-table row of ``model_id``; without one, the only (or latest) model."""
        models = self.models()
        if models.height == 0:
            raise ClanetError(f"{self.path}: no embeddings yet (run clanet-store encode)")
        if model_id is None:
            return models.sort("created_at").row(-1, named=True)
        found = models.filter(pl.col("model_id") == model_id)
        if found.height == 0:
            known = ", ".join(models["model_id"])
            raise ClanetError(f"{self.path}: no embeddings of model {model_id} (known: {known})")
        return found.row(0, named=True)

    def embeddings_table(self, model_id: str | None = None):
        """The LanceDB table holding ``model_id``'s vectors."""
        return self.table(self.model_row(model_id)["table"])

    def embeddings_arrow(
        self,
        where: Expr | None = None,
        columns: Sequence[str] | None = None,
        model_id: str | None = None,
    ) -> pa.Table:
        """Embedding rows of one model (default: the latest), filtered, as an Arrow table."""
        model = self.model_row(model_id)
        query = col("model_id") == model["model_id"]
        if where is not None:
            query = query & where
        search = self.table(model["table"]).search().where(query)
        if columns:
            search = search.select(list(columns))
        return search.limit(None).to_arrow()

    def embeddings(
        self,
        where: Expr | None = None,
        columns: Sequence[str] | None = None,
        model_id: str | None = None,
    ) -> pl.DataFrame:
        """Embedding rows as a polars DataFrame (the ``embedding`` column is an Array column)."""
        return pl.from_arrow(self.embeddings_arrow(where, columns, model_id))


def vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """The vectors of an Arrow table as an (n, dim) float32 array; no copy when the column is
    one chunk (LanceDB results usually are): flatten and to_numpy view the Arrow buffer."""
    array = table.column(column)
    chunk = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    return chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, array.type.list_size)
